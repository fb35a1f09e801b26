"""The producer: a shared encoder plus one metamorphosis module per label.

Public tasks and private attributes both get a module; only the public ones
are ever published (``forward`` returns them alone). The private modules are
what the producer trains against in phase 2 of Algorithm 2 so that public
features carry as little of the private attributes as possible.

With a ``defence`` configured, each module is followed by its release stage
(:mod:`.release`: bottleneck, eraser, keyed noise), and what ``forward`` and
:meth:`Producer.features` return is what is released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..config import MAX_ERASED_VALUES, Config, LabelSpec
from ..errors import ConfigError
from .encoders import SplitNetwork, create_encoder
from .metamorphosis import create_module
from .release import Release, keyed_normal

__all__ = [
    "Producer",
    "build_network",
    "build_producer",
    "build_heads",
    "count_parameters",
    "freeze",
    "train_only",
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
        releases: each label's release stage (none: features are released as the
            modules give them).
        secret: the key of the release noise (needed when a release is noisy).
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
        releases: nn.ModuleDict | None = None,
        secret: bytes | None = None,
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
        self.releases = releases if releases is not None else nn.ModuleDict()
        self.secret = secret
        #: the KL weight's share this epoch (``defence.beta_warmup``; the trainer sets it)
        self.kl_scale = 1.0

    def encode(self, images: Tensor) -> Tensor:
        """The shared encoder output ``E(x)`` (never released)."""
        return self.encoder(images)

    def features(self, images: Tensor, task: str, *, noise: bool = True) -> Tensor:
        """One label's released features (``noise=False``: without the release noise)."""
        return self(images, names=[task], noise=noise)[task]

    def forward(
        self, images: Tensor, names: Sequence[str] | None = None, *, noise: bool = True
    ) -> dict[str, Tensor]:
        """Features of the public tasks, or of ``names`` (private ones included).

        The encoder runs once and every requested module reads its output. In eval
        mode a public task's features are its release: keyed noise included unless
        ``noise`` is False; a private attribute's are its noiseless code. In training
        mode the noise is fresh.
        """
        names = self.tasks if names is None else list(names)
        self._check_names(names)
        shared = self.encode(images)
        return {name: self.released(name, shared, images, noise=noise) for name in names}

    def released(self, name: str, shared: Tensor, images: Tensor, *, noise: bool = True) -> Tensor:
        """Label ``name``'s features from the encoder output ``shared`` of ``images``: its
        module, then its release stage (what :meth:`forward` returns for it; for callers
        that already hold the encoder output)."""
        features = self.task_modules[name](shared)
        if name not in self.releases:
            return features
        release = self.release_of(name)
        draw = None
        if not self.training and noise and release.noisy and name in self.tasks:
            if self.secret is None:
                raise ConfigError(
                    f"task {name!r} is released with keyed noise but this producer has no "
                    "release secret (release.key beside its weights)"
                )
            shape = release.code_shape(features.shape[1:])
            draw = keyed_normal(images, name, self.secret, shape)
        return release(features, draw)

    def release_of(self, name: str) -> Release:
        """The release stage of a label (a producer built with a ``defence`` has one each)."""
        return cast(Release, self.releases[name])

    def kl_term(self, names: Sequence[str]) -> Tensor | None:
        """Per-sample β·KL of the bottlenecks of ``names`` in the last training forward."""
        terms = [self.release_of(n).kl for n in names if n in self.releases]
        present = [t for t in terms if t is not None]
        return self.kl_scale * torch.stack(present).sum(dim=0) if present else None

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
    feature_shape = network.feature_shape(input_shape)
    channels = feature_shape[0]
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
        releases=build_releases(config, feature_shape) if config.has_release_stage else None,
    )


def build_releases(config: Config, feature_shape: tuple[int, int, int]) -> nn.ModuleDict:
    """Every label's release stage (``config.defence``).

    Every label gets the bottleneck (the SSIM term compares maps of one shape); only
    public tasks get the release noise and the eraser, as only they are released.
    """
    defence = config.defence
    side = min(feature_shape[1:])
    if defence.code_size is not None and defence.code_size > side:
        raise ConfigError(
            f"defence.code_size={defence.code_size} is larger than the module's "
            f"{feature_shape[1]}×{feature_shape[2]} map: set it to {side} or less"
        )
    public = {spec.name for spec in config.tasks}
    eraser_shape = _eraser_shape(config, feature_shape) if defence.erase == "linear" else None
    return nn.ModuleDict(
        {
            spec.name: Release(
                feature_shape[0],
                bottleneck_channels=defence.bottleneck_channels,
                beta=defence.beta,
                noise=defence.noise if spec.name in public else 0.0,
                eraser_shape=eraser_shape if spec.name in public else None,
                code_size=defence.code_size,
                channel=defence.channel,
            )
            for spec in config.all_labels
        }
    )


def erased_columns(spec: LabelSpec) -> int:
    """Columns of a private attribute in the eraser's concept matrix (one-hot; binary: 1)."""
    if spec.kind == "binary":
        return 1
    if spec.num_classes is None:
        raise ConfigError(f"{spec.name}.num_classes is unknown: read it from the data first")
    return spec.num_classes


def _eraser_shape(config: Config, feature_shape: tuple[int, int, int]) -> tuple[int, int]:
    """``(d, r)``: released code values per image, concept columns of the private attributes."""
    private = config.private_attributes
    if not private:
        raise ConfigError("defence.erase='linear' erases private attributes: name at least one")
    dense = [s.name for s in private if s.is_dense]
    if dense:
        raise ConfigError(f"defence.erase='linear' erases classification labels; {dense} are dense")
    channels, height, width = feature_shape
    if config.defence.bottleneck_channels is not None:
        channels = config.defence.bottleneck_channels
    if config.defence.code_size is not None:
        height = width = config.defence.code_size
    values = channels * height * width
    if values > MAX_ERASED_VALUES:
        most = max(1, MAX_ERASED_VALUES // (height * width))
        raise ConfigError(
            f"defence.erase='linear' fits a {values}×{values} covariance "
            f"({channels}×{height}×{width} values per image; at most {MAX_ERASED_VALUES}): "
            f"set defence.bottleneck_channels to {most} or fewer"
        )
    return values, sum(erased_columns(s) for s in private)


def build_heads(
    labels: Sequence[LabelSpec],
    network: SplitNetwork,
    input_shape: tuple[int, int, int],
    *,
    code_size: int | None = None,
) -> nn.ModuleDict:
    """One consumer head per label (private attributes' heads stay with the producer);
    ``code_size``: the release's pooled code side (``config.defence.code_size``)."""
    hw = (input_shape[1], input_shape[2])
    return nn.ModuleDict(
        {spec.name: network.make_head(spec, hw, code_size=code_size) for spec in labels}
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def freeze(module: nn.Module, frozen: bool = True) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(not frozen)


def train_only(producer: Producer, labels: Sequence[str], *, encoder: bool) -> None:
    """Freeze the producer except the modules of ``labels`` with their release stages
    (bottlenecks), and the encoder when ``encoder``: what one training phase moves."""
    freeze(producer, True)
    if encoder:
        freeze(producer.encoder, False)
    for name in labels:
        freeze(producer.task_modules[name], False)
        if name in producer.releases:
            freeze(producer.releases[name], False)
