"""k-nearest neighbours: an attacker with nothing to train and nothing to tune but k.

Each test item gets the majority label of its k nearest training items in the
standardised, pooled feature space (Euclidean). It needs no optimisation, so
an attacker that "did not converge" cannot hide a leak from it, and it finds
labels that are local in feature space however nonlinear they are. k is
chosen on the held-out slice of the train split; the final vote uses every
training item. It is deterministic, so it runs once whatever the restarts,
and it predicts one value per item, so it does not attack dense labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import LabelSpec
from ...errors import ConfigError
from .attacker import ATTACKERS, POOL_GRID, Attacker, Cell, Standardise, pooled

__all__ = ["Knn", "KnnOptions"]

_QUERY_CHUNK = 256  # query rows per distance block: bounds memory on large train splits


@dataclass(frozen=True)
class KnnOptions:
    """The k-NN attacker's choices.

    Attributes:
        neighbours: the values of k tried on the held-out slice (odd: no ties between two
            classes); without a slice the middle one is used.
        grid: cells a side each feature map is averaged to.
    """

    neighbours: tuple[int, ...] = (1, 3, 5, 9, 15, 25)
    grid: int = POOL_GRID

    def __post_init__(self) -> None:
        if not self.neighbours or any(
            not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in self.neighbours
        ):
            raise ConfigError(
                f"knn neighbours={self.neighbours!r} is invalid: expected integers >= 1"
            )
        if not isinstance(self.grid, int) or isinstance(self.grid, bool) or self.grid < 1:
            raise ConfigError(f"knn grid={self.grid!r} is invalid: expected an integer >= 1")


@ATTACKERS.register("knn")
class Knn(Attacker):
    """Majority vote of the k nearest training items; k chosen on the held-out slice."""

    name = "knn"
    seeded = False
    assumes = (
        f"k-NN: the majority label of the k nearest training items in the standardised "
        f"features averaged to a {KnnOptions.grid}×{KnnOptions.grid} grid per channel, k in "
        f"{list(KnnOptions.neighbours)} chosen on the held-out slice; nothing to train, so "
        "nothing to under-train. Not run on dense labels."
    )

    def __init__(self, options: KnnOptions | None = None) -> None:
        self.options = options or KnnOptions()

    def applies_to(self, spec: LabelSpec) -> bool:
        return not spec.is_dense

    def predict(self, cell: Cell, *, seed: int) -> Tensor:
        del seed  # deterministic: nothing is drawn
        grid = self.options.grid
        k = self._choose_k(cell)
        reference = pooled(cell.train_inputs, grid)
        standardise = Standardise(reference)
        labels = _class_index(cell.spec, cell.train_targets)
        nearest = _nearest(
            standardise(pooled(cell.test_inputs, grid)), standardise(reference), k, cell.device
        )
        return _vote(cell.spec, labels[nearest])

    def _choose_k(self, cell: Cell) -> int:
        """The k with the best held-out score (the smallest among equals)."""
        usable = sorted({min(k, len(cell.fit_inputs)) for k in self.options.neighbours})
        if cell.holdout_inputs is None or cell.holdout_targets is None:
            return usable[len(usable) // 2]
        reference = pooled(cell.fit_inputs, self.options.grid)
        standardise = Standardise(reference)
        queries = standardise(pooled(cell.holdout_inputs, self.options.grid))
        nearest = _nearest(queries, standardise(reference), max(usable), cell.device)
        votes = _class_index(cell.spec, cell.fit_targets)[nearest]
        scores = [cell.judge(_vote(cell.spec, votes[:, :k]), cell.holdout_targets) for k in usable]
        return usable[max(range(len(usable)), key=lambda i: (scores[i][0], -i))]


def _class_index(spec: LabelSpec, targets: Tensor) -> Tensor:
    """Targets as class indices (binary targets are floats 0 / 1)."""
    return (targets > 0.5).long() if spec.kind == "binary" else targets.long()


@torch.no_grad()
def _nearest(queries: Tensor, reference: Tensor, k: int, device: torch.device | str) -> Tensor:
    """N×k indices of each query's nearest reference rows, nearest first."""
    reference = reference.to(device)
    blocks = [
        torch.cdist(block.to(device), reference).topk(k, dim=1, largest=False).indices.cpu()
        for block in queries.split(_QUERY_CHUNK)
    ]
    return torch.cat(blocks) if blocks else torch.zeros(0, k, dtype=torch.long)


def _vote(spec: LabelSpec, neighbour_labels: Tensor) -> Tensor:
    """Vote shares in the consumer head's output format: N×K for multiclass, N logits for
    binary (the share of class 1 minus one half: positive predicts 1)."""
    classes = 2 if spec.kind == "binary" else spec.num_outputs
    shares = F.one_hot(neighbour_labels, classes).float().mean(dim=1)
    return shares[:, 1] - 0.5 if spec.kind == "binary" else shares
