"""Task-privacy swap matrices (paper Tables 4, 6–8), in two protocols.

Cell ``[i][j]`` is the primary metric of label ``j`` computed from the
features of label ``i``'s module; the diagonal is utility.

* **kept heads** (the paper's protocol): label ``j``'s trained consumer head
  is fed module ``i``'s features. It measures what a consumer who keeps its
  head learns from features it was not trained on.
* **retrained** (the stronger attacker): a fresh head of the same
  architecture is trained on module ``i``'s features of the train split for
  label ``j``, and scored on the test split. Features that merely *confuse* a
  fixed head can still carry the label; only this protocol finds out.

The retrained matrix's rows are what an attacker can actually hold: the
public tasks' features, plus ``encoder``, the shared encoder output, i.e. the
universal features a producer without metamorphosis modules would publish.
That row is the baseline every leakage number is compared with. (Private
modules' features are never published, so they get no retrained row.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import LabelSpec
from ..losses.tasks import task_loss
from ..metrics import create_metric, primary_metric
from .budget import AttackBudget
from .features import FeatureSet
from .fitting import fit, predict

__all__ = [
    "KEPT_HEADS_ASSUMPTION",
    "RETRAINED_ASSUMPTION",
    "SwapResult",
    "kept_head_swap",
    "label_loss",
    "retrained_swap",
    "score",
]

KEPT_HEADS_ASSUMPTION = (
    "Kept heads (paper protocol): a consumer of task i feeds task i's features to the head "
    "it trained for task j, without retraining it."
)
RETRAINED_ASSUMPTION = (
    "Retrained attacker: a consumer of task i holds task i's features and the labels of "
    "task j for the train split, trains a fresh head of the consumer architecture on them, "
    "and is scored on the held-out test split."
)

HeadFactory = Callable[[LabelSpec], nn.Module]


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


def score(spec: LabelSpec, outputs: Tensor, targets: Tensor) -> dict[str, float]:
    """Every metric of ``spec``'s kind for ``outputs`` against ``targets``."""
    metric = create_metric(spec.kind, spec.num_classes)
    metric.update(outputs, targets)
    return metric.compute()


def _metric_names(labels: Sequence[LabelSpec]) -> dict[str, tuple[str, bool]]:
    return {spec.name: primary_metric(spec.kind) for spec in labels}


def kept_head_swap(
    heads: Mapping[str, nn.Module],
    labels: Sequence[LabelSpec],
    test: FeatureSet,
    *,
    device: torch.device | str = "cpu",
) -> SwapResult:
    """The paper's protocol on the test features: every trained head on every module."""
    result = SwapResult("kept-heads", _metric_names(labels))
    for source in (spec.name for spec in labels):
        for spec in labels:
            head = heads[spec.name].to(device)
            outputs = predict(head, test.sources[source], device=device)
            result.add(source, spec.name, score(spec, outputs, test.targets[spec.name]))
    return result


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
    """A fresh head per (source, label), trained on ``train`` and scored on ``test``.

    Args:
        make_head: builds a fresh consumer head for a label (the consumer architecture).
        labels: the labels (columns of the matrix).
        train: attacker training features and targets.
        test: held-out features and targets.
        sources: feature sources (rows), e.g. ``encoder`` and every module.
        budget: the attacker's training budget.
        seed: each cell is seeded from this and its position, so it is reproducible.
        device: where the attackers train.
        progress: show progress bars.
    """
    result = SwapResult("retrained", _metric_names(labels))
    for row, source in enumerate(sources):
        for column, spec in enumerate(labels):
            cell_seed = seed + 1000 * row + column
            torch.manual_seed(cell_seed)  # the head's initial weights belong to the seed too
            head = make_head(spec)
            fit(
                head,
                train.sources[source],
                train.targets[spec.name],
                label_loss(spec),
                budget=budget,
                epochs=budget.epochs,
                seed=cell_seed,
                device=device,
                progress=progress,
                description=f"attack {spec.name} from {source}",
            )
            outputs = predict(head, test.sources[source], device=device)
            result.add(source, spec.name, score(spec, outputs, test.targets[spec.name]))
    return result


def label_loss(spec: LabelSpec) -> Callable[[Tensor, Tensor], Tensor]:
    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return task_loss(spec.kind, outputs, targets).mean()

    return loss
