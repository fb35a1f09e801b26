"""``method: universal``: one shared feature map (the encoder output) for every task.

The baseline every leakage number is compared with: identity modules, every
task's consumer trained on the same features by the split-learning step. With
``privacy.mode: input`` the encoder trains under DP-SGD (the step is per-sample).
"""

from __future__ import annotations

from ..split import StepResult, producer_step
from .base import Method, PhasePlan, StepInputs
from .registry import METHODS

__all__ = ["Universal"]


@METHODS.register("universal")
class Universal(Method):
    """Universal features: the encoder output, shared by every task."""

    name = "universal"

    def check(self) -> None:
        self.require_one_shared_map()

    def phases(self) -> list[PhasePlan]:
        config = self.config
        everyone = tuple(spec.name for spec in config.all_labels)
        dp = config.privacy.uses_dp
        return [PhasePlan("joint", everyone, True, dp, 0.0, config.train.epochs)]

    def step(self, phase: PhasePlan, inputs: StepInputs) -> StepResult:
        return producer_step(
            inputs.model,
            inputs.optimizer,
            inputs.images,
            inputs.targets,
            inputs.consumers,
            phase.labels,
        )
