"""The retrained consumer head: the attacker every consumer can build.

A consumer of task i holds task i's features and learns labels of task j (or
a private attribute) for some items. It trains a fresh head of the very
architecture it uses for its own task on them. Features that merely
*confuse* a fixed head (the paper's kept-head protocol) can still carry the
label; only a retrained head finds out. Its scores also fill the retrained
swap matrix, diagonal (utility) included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...config import LabelSpec
from ...errors import ConfigError
from ..budget import AttackBudget
from ..features import FeatureSet
from .attacker import (
    ATTACKERS,
    Cell,
    SwapResult,
    TrainedAttacker,
    attack_cells,
    holdout_split,
    make_cell,
)
from .base import HeadFactory

__all__ = ["RetrainedHead", "retrained_swap"]


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


def retrained_swap(
    make_head: HeadFactory,
    labels: Sequence[LabelSpec],
    train: FeatureSet,
    test: FeatureSet,
    *,
    sources: Sequence[str],
    budget: AttackBudget,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SwapResult:
    """A fresh consumer head per (source, label), trained on ``train`` and scored on ``test``;
    each cell is the best of ``budget.restarts`` restarts.

    Args:
        make_head: builds a fresh consumer head for a label (the consumer architecture).
        labels: the labels (columns of the matrix).
        train: attacker training features and targets.
        test: held-out features and targets.
        sources: feature sources (rows), e.g. ``encoder`` and every module.
        budget: the attacker's training budget.
        seed: every restart is seeded from this and the cell's names, so it is reproducible.
        device: where the attackers train.
        progress: show progress bars.
    """
    split = holdout_split(len(train), budget.holdout, seed)
    cells = [
        make_cell(
            spec,
            source,
            train,
            test,
            split=split,
            make_head=make_head,
            budget=budget,
            device=device,
            progress=progress,
        )
        for source in sources
        for spec in labels
    ]
    result = SwapResult.of("retrained", labels)
    for cell, attacked in zip(
        cells, attack_cells(RetrainedHead(), cells, test.targets, seed=seed), strict=True
    ):
        result.add(cell.source, cell.spec.name, attacked.details)
    return result
