"""The retrained consumer head: the attacker every consumer can build.

A consumer of task i holds task i's features and learns labels of task j (or
a private attribute) for some items. It trains a fresh head of the very
architecture it uses for its own task on them. Features that merely
*confuse* a fixed head (the paper's kept-head protocol) can still carry the
label; only a retrained head finds out. Its scores also fill the retrained
swap matrix, diagonal (utility) included.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from .attacker import ATTACKERS, Cell, TrainedAttacker

__all__ = ["RetrainedHead"]


@ATTACKERS.register("retrained_head")
class RetrainedHead(TrainedAttacker):
    """A fresh head of the consumer architecture on the feature maps as released."""

    name = "retrained_head"
    assumes = (
        "Retrained head: a consumer of task i holds task i's features and label j for the "
        "train split, trains a fresh head of the consumer architecture on "
        "them (restarts, early stopping on a held-out slice), and is scored on the test split."
    )

    def build(self, cell: Cell) -> nn.Module:
        if cell.make_head is None:
            raise ConfigError(
                f"the retrained-head attacker needs the consumer architecture (make_head) "
                f"to attack {cell.spec.name!r} from {cell.source!r}"
            )
        return cell.make_head(cell.spec)
