"""Attackers: models trained to recover one label from one feature source.

The leakage of a label through a feature source is what the *best* attacker
recovers, so the audit runs several attackers (:data:`ATTACKERS`: the
consumer-architecture head, a small MLP, a linear probe, k-NN), each with
several seeded restarts, and keeps the best score. One attacker is one file
that registers itself here; this module holds what they share:

* :class:`Cell`: one (source, label) problem, with the attacker's training
  items split into the part it trains on and a held-out slice it stops on;
* :class:`Attacker` / :class:`TrainedAttacker`: the interface, and training
  with restarts and early stopping (:func:`~metamorphosis.audit.fitting.fit_early_stopped`);
* :func:`attack_cells`: one attacker over many cells, every restart scored on
  the test split.

Every seed is derived from the audit's seed and the cell's and attacker's
*names*, so a cell's result does not depend on which other cells run.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import LabelSpec
from ...errors import ConfigError
from ...losses.tasks import task_loss
from ...metrics import create_metric, primary_metric
from ...registry import Registry
from ..budget import AttackBudget
from ..features import FeatureSet
from ..fitting import Holdout, fit_early_stopped, predict
from .base import HeadFactory

__all__ = [
    "ATTACKERS",
    "Attacker",
    "AttackerResult",
    "Cell",
    "Pool",
    "Standardise",
    "SwapResult",
    "TrainedAttacker",
    "attack_cells",
    "derive_seed",
    "holdout_split",
    "label_loss",
    "make_cell",
    "pooled",
    "score",
]

ATTACKERS: Registry[Attacker] = Registry("attacker")
"""Every attacker by name; each attacker's module registers its class here."""

POOL_GRID = 4
"""Pooled attackers (MLP, k-NN) average each feature map down to at most this many cells a
side: it keeps coarse layout (where in the image) but not the fine detail a consumer head
would need thousands of items to use."""


def score(spec: LabelSpec, outputs: Tensor, targets: Tensor) -> dict[str, float]:
    """Every metric of ``spec``'s kind for ``outputs`` against ``targets``."""
    metric = create_metric(spec.kind, spec.num_classes)
    metric.update(outputs, targets)
    return metric.compute()


def label_loss(spec: LabelSpec) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of a label's kind, averaged over the batch."""

    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return task_loss(spec.kind, outputs, targets).mean()

    return loss


def derive_seed(seed: int, *names: object) -> int:
    """``seed`` plus a stable offset from ``names`` (crc32, not ``hash``: stable across runs)."""
    return seed + zlib.crc32("|".join(map(str, names)).encode("utf-8")) % 1_000_003


def holdout_split(size: int, fraction: float, seed: int) -> tuple[Tensor, Tensor | None]:
    """(indices trained on, held-out indices) of ``size`` training items, drawn with ``seed``.

    No held-out slice (None) when ``fraction`` is 0 or when the slice or the rest would
    hold fewer than 2 items: an attacker then trains on everything for the full budget.
    """
    held = round(size * fraction)
    if held < 2 or size - held < 2:
        return torch.arange(size), None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


def pooled(features: Tensor, grid: int = POOL_GRID) -> Tensor:
    """N×C×h×w maps averaged to at most ``grid``×``grid`` cells, flattened to N×D."""
    if features.dim() != 4:
        return features.flatten(1)
    size = (min(grid, int(features.shape[-2])), min(grid, int(features.shape[-1])))
    return F.adaptive_avg_pool2d(features, size).flatten(1)


class Pool(nn.Module):
    """:func:`pooled` as a layer."""

    def __init__(self, grid: int = POOL_GRID) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        return pooled(x, self.grid)


class Standardise(nn.Module):
    """Fixed per-feature standardisation with statistics of the attacker's training items:
    a linear model or a distance then does not depend on each feature's scale."""

    mean: Tensor
    std: Tensor

    def __init__(self, inputs: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", inputs.mean(dim=0, keepdim=True))
        self.register_buffer("std", inputs.std(dim=0, keepdim=True).clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class Cell:
    """One attack problem: recover ``spec`` from the features of ``source``.

    Attributes:
        spec: the label attacked.
        source: the feature source attacked.
        fit_inputs / fit_targets: the attacker's training items it trains on.
        holdout_inputs / holdout_targets: its held-out slice of the train split
            (None: no slice, no early stopping).
        test_inputs: the test items it is scored on (their targets stay with the caller).
        output_hw: the image size, the resolution of dense labels.
        make_head: a fresh consumer-architecture head (None where none is available).
        budget: the attack budget.
        device: where the attacker trains.
        progress: show progress bars.
    """

    spec: LabelSpec
    source: str
    fit_inputs: Tensor
    fit_targets: Tensor
    holdout_inputs: Tensor | None
    holdout_targets: Tensor | None
    test_inputs: Tensor
    output_hw: tuple[int, int]
    make_head: HeadFactory | None
    budget: AttackBudget
    device: torch.device | str = "cpu"
    progress: bool = False

    @property
    def train_inputs(self) -> Tensor:
        """Every training item, held-out slice included (for an attacker that does not train)."""
        if self.holdout_inputs is None:
            return self.fit_inputs
        return torch.cat([self.fit_inputs, self.holdout_inputs])

    @property
    def train_targets(self) -> Tensor:
        if self.holdout_targets is None:
            return self.fit_targets
        return torch.cat([self.fit_targets, self.holdout_targets])

    def judge(self, outputs: Tensor, targets: Tensor) -> tuple[float, float]:
        """(primary metric signed so that higher is better, loss) of ``outputs``."""
        name, higher = primary_metric(self.spec.kind)
        value = score(self.spec, outputs, targets)[name]
        loss = float(label_loss(self.spec)(outputs, targets))
        return (value if higher else -value), loss

    def holdout(self) -> Holdout | None:
        if self.holdout_inputs is None or self.holdout_targets is None:
            return None
        return Holdout(self.holdout_inputs, self.holdout_targets, self.judge)


def make_cell(
    spec: LabelSpec,
    source: str,
    train: FeatureSet,
    test: FeatureSet,
    *,
    split: tuple[Tensor, Tensor | None],
    make_head: HeadFactory | None,
    budget: AttackBudget,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Cell:
    """The cell (``source``, ``spec``) with the train split cut by ``split``
    (:func:`holdout_split`)."""
    for name, features in (("train", train), ("test", test)):
        if source not in features.sources:
            raise ConfigError(
                f"feature source {source!r} is unknown in the {name} split: "
                f"available sources are {sorted(features.sources)}"
            )
        if spec.name not in features.targets:
            raise ConfigError(
                f"label {spec.name!r} has no targets in the {name} split: "
                f"available labels are {sorted(features.targets)}"
            )
    fit_index, held_index = split
    inputs, targets = train.sources[source], train.targets[spec.name]
    return Cell(
        spec=spec,
        source=source,
        fit_inputs=inputs[fit_index],
        fit_targets=targets[fit_index],
        holdout_inputs=None if held_index is None else inputs[held_index],
        holdout_targets=None if held_index is None else targets[held_index],
        test_inputs=test.sources[source],
        output_hw=(int(train.images.shape[-2]), int(train.images.shape[-1])),
        make_head=make_head,
        budget=budget,
        device=device,
        progress=progress,
    )


class Attacker(ABC):
    """One kind of attacker.

    Attributes:
        name: its registry name, as the report names it.
        assumes: what this attacker is, in words for the report.
        seeded: whether restarts differ (a deterministic attacker such as k-NN runs once).
    """

    name: ClassVar[str]
    assumes: ClassVar[str]
    seeded: ClassVar[bool] = True

    def applies_to(self, spec: LabelSpec) -> bool:
        """Whether this attacker can predict ``spec`` at all (e.g. not a dense map)."""
        return True

    @abstractmethod
    def predict(self, cell: Cell, *, seed: int) -> Tensor:
        """Train on ``cell``'s training items and return its outputs for ``cell.test_inputs``
        (in the format of the label's consumer head: logits or a map)."""


class TrainedAttacker(Attacker):
    """An attacker that is a model trained with the label's loss and early stopping."""

    @abstractmethod
    def build(self, cell: Cell) -> nn.Module:
        """A fresh model for ``cell`` (called after the restart's seed is set)."""

    def predict(self, cell: Cell, *, seed: int) -> Tensor:
        torch.manual_seed(seed)  # the model's initial weights belong to the restart's seed
        model = self.build(cell)
        fit_early_stopped(
            model,
            cell.fit_inputs,
            cell.fit_targets,
            label_loss(cell.spec),
            holdout=cell.holdout(),
            budget=cell.budget,
            seed=seed,
            device=cell.device,
            progress=cell.progress,
            description=f"{self.name}: {cell.spec.name} from {cell.source}",
        )
        outputs = predict(model, cell.test_inputs, device=cell.device)
        model.cpu()
        return outputs


@dataclass
class AttackerResult:
    """One attacker on one cell: the primary metric of every restart on the test split.

    Attributes:
        attacker: the attacker's name.
        metric: the primary metric's name.
        higher_is_better: its direction.
        values: one value per restart (NaN where the metric is undefined).
        details: every metric of the best restart.
    """

    attacker: str
    metric: str
    higher_is_better: bool
    values: list[float]
    details: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> float | None:
        """The best restart's value (None if no restart gave a number)."""
        finite = [v for v in self.values if v == v]
        if not finite:
            return None
        return max(finite) if self.higher_is_better else min(finite)


def _restart_seeds(attacker: Attacker, cell: Cell, seed: int, restarts: int) -> list[int]:
    count = restarts if attacker.seeded else 1
    return [derive_seed(seed, cell.source, cell.spec.name, attacker.name, r) for r in range(count)]


def attack_cells(
    attacker: Attacker,
    cells: Sequence[Cell],
    test_targets: Mapping[str, Tensor],
    *,
    seed: int,
) -> list[AttackerResult]:
    """``attacker`` on every cell, ``cell.budget.restarts`` times, scored on the test split.

    Args:
        attacker: the attacker.
        cells: the problems; each must be one the attacker applies to.
        test_targets: label name -> test targets.
        seed: the audit's seed (restarts derive theirs from it and the names).
    """
    for cell in cells:  # before any training: a wrong cell fails now, not minutes in
        if not attacker.applies_to(cell.spec):
            raise ConfigError(
                f"attacker {attacker.name!r} does not apply to label {cell.spec.name!r} "
                f"of kind {cell.spec.kind!r}"
            )
    results = []
    for cell in cells:
        name, higher = primary_metric(cell.spec.kind)
        runs = [
            score(cell.spec, attacker.predict(cell, seed=s), test_targets[cell.spec.name])
            for s in _restart_seeds(attacker, cell, seed, cell.budget.restarts)
        ]
        values = [float(metrics[name]) for metrics in runs]
        result = AttackerResult(attacker.name, name, higher, values)
        # every metric of the best restart (the first if none gave a number)
        result.details = next(
            (m for m, v in zip(runs, values, strict=True) if v == result.best), runs[0]
        )
        results.append(result)
    return results


@dataclass
class SwapResult:
    """A swap matrix: ``matrix[source][label]`` = primary metric of ``label``.

    Attributes:
        protocol: ``kept-heads`` or ``retrained``.
        metric: label -> (primary metric name, higher is better).
        matrix: source -> label -> primary metric value.
        details: source -> label -> every metric of that cell.
    """

    protocol: str
    metric: dict[str, tuple[str, bool]]
    matrix: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @classmethod
    def of(cls, protocol: str, labels: Sequence[LabelSpec]) -> SwapResult:
        """An empty matrix over ``labels``, each with its primary metric."""
        return cls(protocol, {spec.name: primary_metric(spec.kind) for spec in labels})

    def add(self, source: str, label: str, metrics: Mapping[str, float]) -> None:
        key = self.metric[label][0]
        self.matrix.setdefault(source, {})[label] = float(metrics[key])
        self.details.setdefault(source, {})[label] = dict(metrics)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "metric": {k: {"name": n, "higher_is_better": h} for k, (n, h) in self.metric.items()},
            "matrix": self.matrix,
            "details": self.details,
        }
