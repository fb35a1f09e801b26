"""The producer: a shared encoder plus one metamorphosis module per label.

Public tasks and private attributes both get a module; only the public ones
are ever published (``forward`` returns them alone). The private modules are
what the producer trains against in phase 2 of Algorithm 2 so that public
features carry as little of the private attributes as possible.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..config import Config, LabelSpec
from ..errors import ConfigError
from .encoders import SplitNetwork, create_encoder
from .metamorphosis import create_module

__all__ = [
    "Producer",
    "build_network",
    "build_producer",
    "build_heads",
    "count_parameters",
    "freeze",
]


class Producer(nn.Module):
    """Encoder ``E`` and modules ``g_t`` for every task and private attribute.

    Args:
        encoder: the producer-side part of the split network.
        task_modules: one module per label name, public tasks and private
            attributes alike.
        tasks: names of the public tasks (the only ones ``forward`` returns).
        private_attributes: names of the producer's hidden labels.
        input_shape: ``(C, H, W)`` of the images the producer expects.
        preprocess: the exact PIL → tensor transform used in training.
    """

    def __init__(
        self,
        encoder: nn.Module,
        task_modules: nn.ModuleDict,
        *,
        tasks: Sequence[str],
        private_attributes: Sequence[str] = (),
        input_shape: tuple[int, int, int],
        preprocess=None,
    ) -> None:
        super().__init__()
        missing = [n for n in (*tasks, *private_attributes) if n not in task_modules]
        if missing:
            raise ConfigError(f"no metamorphosis module for {missing}")
        self.encoder = encoder
        self.task_modules = task_modules
        self.tasks = list(tasks)
        self.private_attributes = list(private_attributes)
        self.input_shape = tuple(input_shape)
        self._preprocess = preprocess

    def encode(self, images: Tensor) -> Tensor:
        """The shared encoder output ``E(x)``."""
        return self.encoder(images)

    def features(self, images: Tensor, task: str) -> Tensor:
        """One label's features ``g_task(E(x))``."""
        self._check_names([task])
        return self.task_modules[task](self.encode(images))

    def forward(self, images: Tensor, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Features of the public tasks, or of ``names`` (private ones included).

        The encoder runs once and every requested module reads its output.
        """
        names = self.tasks if names is None else list(names)
        self._check_names(names)
        shared = self.encode(images)
        return {name: self.task_modules[name](shared) for name in names}

    def preprocess(self, image) -> Tensor:
        """The exact transform used in training: PIL image → ``C×H×W`` tensor."""
        if self._preprocess is None:
            raise ConfigError("this producer was built without a preprocessing transform")
        return self._preprocess(image)

    def _check_names(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.task_modules]
        if unknown:
            known = self.tasks + self.private_attributes
            raise ConfigError(f"unknown task(s) {unknown}; this producer has {known}")


def build_network(config: Config) -> SplitNetwork:
    """The split network (encoder + head factory) that ``config.model`` names."""
    return create_encoder(
        config.model.encoder, split_index=config.model.split_index, norm=config.model.norm
    )


def build_producer(
    config: Config,
    network: SplitNetwork,
    input_shape: tuple[int, int, int],
    preprocess=None,
) -> Producer:
    """A freshly initialised producer for ``config`` on top of ``network``."""
    channels = network.feature_shape(input_shape)[0]
    modules = nn.ModuleDict(
        {
            spec.name: create_module(
                config.module_kind,
                channels,
                groups=config.model.groups,
                reduction=config.model.reduction,
            )
            for spec in config.all_labels
        }
    )
    return Producer(
        network.encoder,
        modules,
        tasks=[s.name for s in config.tasks],
        private_attributes=[s.name for s in config.private_attributes],
        input_shape=input_shape,
        preprocess=preprocess,
    )


def build_heads(
    labels: Sequence[LabelSpec], network: SplitNetwork, input_shape: tuple[int, int, int]
) -> nn.ModuleDict:
    """One consumer head per label (private attributes' heads stay with the producer)."""
    hw = (input_shape[1], input_shape[2])
    return nn.ModuleDict({spec.name: network.make_head(spec, hw) for spec in labels})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def freeze(module: nn.Module, frozen: bool = True) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(not frozen)
