"""What a training method is: the one interface the trainer drives.

A method owns everything that makes it what it is: its options (a frozen
dataclass filled from the config section named after it), its phases, the
training-only models it needs besides the producer and the heads (an
adversary, teachers: its :class:`TrainingState`, saved in every checkpoint),
its step, the names of its loss terms in ``metrics.jsonl``, and what it can
do (train with remote consumers, add a task to a finished run, train under
DP-SGD). The trainer (:class:`~metamorphosis.train.loop.Trainer`) knows
none of this: it runs the phases, batches, checkpoints and evaluation.

**DP validity.** DP-SGD's accounting assumes that in a DP phase the gradient
of sample ``i`` depends on sample ``i`` alone (and on weights fixed before the
step). A method whose producer losses use batch statistics, or models updated
on the batch before the producer's gradient is taken, sets ``per_sample =
False`` and says why in ``not_per_sample_because``; the trainer refuses it in
a DP phase. ``tests/train/test_methods_dp_contract.py`` checks the claim of
every registered method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...config import Config, build_section, method_section
from ...errors import ConfigError
from ...models.encoders import SplitNetwork
from ..split import ConsumerLike, StepResult

__all__ = ["Method", "MethodContext", "NoOptions", "PhasePlan", "StepInputs", "TrainingState"]


@dataclass(frozen=True)
class PhasePlan:
    """What one phase trains: which labels, which producer parts, DP or not.

    ``compared`` names frozen modules whose features also enter the SSIM term
    (the existing ones when adding a task).
    """

    name: str
    labels: tuple[str, ...]
    train_encoder: bool
    dp: bool
    omega: float
    epochs: int
    compared: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


class TrainingState(nn.Module):
    """A method's training-only models and their optimisers, never published.

    Checkpointed with the run (weights and optimiser states) so a resumed run
    continues exactly; empty for the methods that need none.
    """

    def __init__(
        self,
        models: nn.ModuleDict | None = None,
        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    ) -> None:
        super().__init__()
        self.models = models if models is not None else nn.ModuleDict()
        self.optimizers = dict(optimizers or {})

    def optimizer_states(self) -> dict[str, dict]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_states(self, states: Mapping[str, dict]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(states[name])


@dataclass(frozen=True)
class MethodContext:
    """What a method may build its training state from."""

    network: SplitNetwork
    input_shape: tuple[int, int, int]
    feature_shape: tuple[int, int, int]
    heads: nn.ModuleDict
    to_pixels: Callable[[Tensor], Tensor]  # model input → pixels in [0, 1]
    #: Classification label → its class frequencies in the train split (``censor``'s
    #: target distribution); binary labels as ``[P(0), P(1)]``.
    class_priors: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass
class StepInputs:
    """One step's batch and the models it moves.

    ``model`` is the producer, or its Opacus wrapper in a DP phase; ``optimizer``
    holds the phase's producer parameters (and :meth:`Method.extra_parameters`),
    None when none trains.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    images: Tensor
    targets: Mapping[str, Tensor]
    consumers: Mapping[str, ConsumerLike]


class Method:
    """A training method; subclass it in one file and register it in ``METHODS``.

    Class attributes:
        name: the ``method:`` value that selects it.
        Options: a frozen dataclass of its options (validated in ``__post_init__``),
            filled from the config section named :attr:`section`.
        remote: its consumers may run in other processes (``--remote``).
        add_task: a finished run may get one more task (``metamorphosis add-task``).
        per_sample: every producer loss of a step is a mean of per-sample losses
            under weights fixed before the step, so DP-SGD may train it.
        not_per_sample_because: why not, when ``per_sample`` is False.
        distributed: its steps may run on several ranks under torchrun, each on its
            share of the batch (every loss a mean of per-sample terms).
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    remote: ClassVar[bool] = True
    add_task: ClassVar[bool] = False
    per_sample: ClassVar[bool] = True
    not_per_sample_because: ClassVar[str] = ""
    distributed: ClassVar[bool] = True

    def __init__(self, config: Config) -> None:
        self.config = config
        self.options: Any = self.build_options(config.options_section(self.section()))
        self.check()

    @classmethod
    def section(cls) -> str:
        return method_section(cls.name)

    @classmethod
    def build_options(cls, raw: Mapping[str, Any]) -> Any:
        """``Options`` from a config section, unknown keys named with the allowed ones."""
        return build_section(cls.section(), cls.Options, raw)

    # -- what subclasses define -------------------------------------------------------
    def check(self) -> None:
        """Refuse a config this method cannot train (one line, naming the key)."""

    def phases(self) -> list[PhasePlan]:
        raise NotImplementedError

    def build_state(self, context: MethodContext) -> TrainingState:
        """The training-only models (none by default)."""
        return TrainingState()

    def extra_parameters(self, phase: PhasePlan) -> list[nn.Parameter]:
        """Parameters trained by the producer's optimiser besides the producer's own."""
        return []

    def step(self, phase: PhasePlan, inputs: StepInputs) -> StepResult:
        raise NotImplementedError

    def validated_labels(self, phase: PhasePlan) -> tuple[str, ...]:
        """Labels whose validation metrics the epoch record reports."""
        return phase.labels

    # -- shared rules -----------------------------------------------------------------
    def check_dp(self, phases: Sequence[PhasePlan]) -> None:
        """A method with batch-dependent losses cannot be trained in a DP phase."""
        dp = [phase.name for phase in phases if phase.dp]
        if dp and not self.per_sample:
            raise ConfigError(
                f"method={self.name!r} cannot train with DP-SGD (phase {dp[0]!r}, "
                f"privacy.mode={self.config.privacy.mode!r}): {self.not_per_sample_because}; "
                "set privacy.mode=none"
            )

    def check_distributed(self, world_size: int) -> None:
        """A method with batch-dependent losses cannot split a batch over ranks."""
        if world_size > 1 and not (self.distributed and self.per_sample):
            reason = self.not_per_sample_because or "its steps need the whole batch"
            raise ConfigError(
                f"method={self.name!r} cannot train on {world_size} processes (torchrun): "
                f"{reason}; run it as one process"
            )

    def require_one_shared_map(self) -> None:
        """Methods that publish one map for every task have no modules to de-correlate."""
        if self.config.privacy.uses_task_privacy:
            raise ConfigError(
                f"method={self.name!r} publishes one shared feature map, so there is no SSIM "
                "term between modules: set privacy.mode=none or input "
                f"(got {self.config.privacy.mode!r})"
            )
