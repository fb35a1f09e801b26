"""A small MLP on pooled features: a nonlinear attacker that needs few items.

The consumer head is deep and needs many items to learn; a linear probe
cannot combine features. Between them, a one-hidden-layer MLP on the feature
maps averaged to a coarse grid (:data:`~.attacker.POOL_GRID`) learns
nonlinear combinations (an attribute written as an XOR of two channels, a
class that is a ring around another) from a few hundred items. It predicts
one value per item, so it does not attack dense labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...config import LabelSpec
from ...errors import ConfigError
from .attacker import ATTACKERS, POOL_GRID, Cell, Pool, Standardise, TrainedAttacker, pooled

__all__ = ["Mlp", "MlpOptions"]


@dataclass(frozen=True)
class MlpOptions:
    """The MLP attacker's size.

    Attributes:
        hidden: units of the hidden layer.
        grid: cells a side each feature map is averaged to.
    """

    hidden: int = 256
    grid: int = POOL_GRID

    def __post_init__(self) -> None:
        for key in ("hidden", "grid"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"mlp {key}={value!r} is invalid: expected an integer >= 1")


@ATTACKERS.register("mlp")
class Mlp(TrainedAttacker):
    """Pool → standardise → Linear → ReLU → Linear."""

    name = "mlp"
    assumes = (
        f"MLP: one hidden layer of {MlpOptions.hidden} units on the standardised features "
        f"averaged to a {MlpOptions.grid}×{MlpOptions.grid} grid per channel; a nonlinear "
        "attacker that needs far fewer items than a consumer head. Not run on dense labels "
        "(it predicts one value per item)."
    )

    def __init__(self, options: MlpOptions | None = None) -> None:
        self.options = options or MlpOptions()

    def applies_to(self, spec: LabelSpec) -> bool:
        return not spec.is_dense

    def build(self, cell: Cell) -> nn.Module:
        grid, hidden = self.options.grid, self.options.hidden
        inputs = pooled(cell.fit_inputs, grid)
        return nn.Sequential(
            Pool(grid),
            Standardise(inputs),
            nn.Linear(inputs.shape[1], hidden),
            nn.ReLU(),
            nn.Linear(hidden, cell.spec.num_outputs),
        )
