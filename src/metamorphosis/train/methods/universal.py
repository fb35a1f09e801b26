"""``method: universal``: one shared feature map (the encoder output) for every task.

The baseline every leakage number is compared with: identity modules, every
task's consumer trained on the same features by the split-learning step. With
``privacy.mode: input`` the encoder trains under DP-SGD (the step is per-sample).
"""

from __future__ import annotations

from .base import PhasePlan
from .metamorphosis import MetaMorphosis
from .registry import METHODS

__all__ = ["Universal"]


@METHODS.register("universal")
class Universal(MetaMorphosis):
    """Universal features: the encoder output, shared by every task.

    Its step is the paper's split-learning step (inherited); its phase has no SSIM term.
    """

    name = "universal"
    add_task = False  # one shared map: no module to add

    def check(self) -> None:
        self.require_one_shared_map()

    def phases(self) -> list[PhasePlan]:
        config = self.config
        everyone = tuple(spec.name for spec in config.all_labels)
        dp = config.privacy.uses_dp
        return [PhasePlan("joint", everyone, True, dp, 0.0, config.train.epochs)]
