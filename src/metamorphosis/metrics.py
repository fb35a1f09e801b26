"""Evaluation metrics that accumulate over batches.

Evaluation runs batch by batch, so each metric keeps sufficient statistics
(counts, a confusion matrix, sums, an angle histogram) and :meth:`Metric.compute`
turns them into numbers. Statistics are pooled over every valid pixel / sample
of the whole evaluation, so results do not depend on the batch size (MTAN
averages per-batch values instead; the two agree when every batch has the same
number of valid pixels).

=============  ==========================================================
kind           ``compute()`` keys
=============  ==========================================================
binary         accuracy (a logit > 0 predicts 1)
multiclass     accuracy
segmentation   miou, pixel_accuracy (over non-void pixels; the mIoU
               averages the classes present in the target or prediction)
depth          abs_err = mean |pred − gt|, rel_err = mean |pred − gt| / gt
               (pixels with gt > 0)
normals        mean_angle, median_angle (degrees), within_11_25,
               within_22_5, within_30 (percent of pixels; gt not all-zero)
=============  ==========================================================

A metric that has seen no valid sample or pixel reports NaN for every key
rather than raising, so a run with an empty split still records its other
metrics (Python's ``json`` writes and reads NaN).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LABEL_KINDS
from .errors import ConfigError, DataError
from .losses.tasks import IGNORE_INDEX, check_task_pair

__all__ = [
    "Metric",
    "AccuracyMetric",
    "SegmentationMetric",
    "DepthMetric",
    "NormalsMetric",
    "PRIMARY_METRICS",
    "create_metric",
    "primary_metric",
]

#: Headline utility of each kind: (metric name, higher_is_better).
PRIMARY_METRICS: dict[str, tuple[str, bool]] = {
    "binary": ("accuracy", True),
    "multiclass": ("accuracy", True),
    "segmentation": ("miou", True),
    "depth": ("abs_err", False),
    "normals": ("mean_angle", False),
}
_NAN = float("nan")


def _check_kind(kind: str) -> None:
    if kind not in LABEL_KINDS:
        raise ConfigError(f"kind={kind!r} is invalid: expected one of {', '.join(LABEL_KINDS)}")


class Metric(ABC):
    """Accumulates one task's evaluation over batches.

    Attributes:
        kind: the label kind this metric evaluates.
    """

    kind: str

    @abstractmethod
    def update(self, output: Tensor, target: Tensor) -> None:
        """Add a batch: the head ``output`` and its ``target`` (see
        :mod:`metamorphosis.losses.tasks` for the shapes)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Metric values over every batch added since the last :meth:`reset`."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every batch added so far."""

    def _prepare(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        output, target = check_task_pair(self.kind, output, target)
        return output.detach(), target.detach()


class AccuracyMetric(Metric):
    """Fraction of correctly classified samples (binary or multiclass)."""

    def __init__(self, kind: str = "binary") -> None:
        if kind not in ("binary", "multiclass"):
            raise ConfigError(f"kind={kind!r} is invalid: expected binary or multiclass")
        self.kind = kind
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, output: Tensor, target: Tensor) -> None:
        output, target = self._prepare(output, target)
        if self.kind == "binary":
            predicted = output > 0
            truth = target > 0.5
        else:
            predicted = output.argmax(dim=1)
            truth = target.long()
        self.correct += int((predicted == truth).sum().item())
        self.total += int(target.numel())

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.correct / self.total if self.total else _NAN}


class SegmentationMetric(Metric):
    """Confusion matrix over non-void pixels → mIoU and pixel accuracy.

    Args:
        num_classes: number of classes K; when None it is taken from the
            output channels of the first batch.
    """

    kind = "segmentation"

    def __init__(self, num_classes: int | None = None) -> None:
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 2):
            raise ConfigError(f"num_classes={num_classes!r} is invalid: expected an integer >= 2")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.confusion = torch.zeros((k, k), dtype=torch.int64) if k else None

    def update(self, output: Tensor, target: Tensor) -> None:
        output, target = self._prepare(output, target)
        k = output.shape[1]
        if self.num_classes is None:
            self.num_classes = k
            self.reset()
        elif k != self.num_classes:
            raise ValueError(
                f"segmentation: output has {k} channels but the metric has "
                f"num_classes={self.num_classes}"
            )
        target = target.long()
        valid = target != IGNORE_INDEX
        truth = target[valid]
        if truth.numel() and (truth.min() < 0 or truth.max() >= k):
            bad = truth[(truth < 0) | (truth >= k)][0].item()
            raise DataError(
                f"segmentation label {bad} is out of range: expected 0..{k - 1} "
                f"or {IGNORE_INDEX} (void)"
            )
        predicted = output.argmax(dim=1)[valid]
        counts = torch.bincount(truth * k + predicted, minlength=k * k)
        assert self.confusion is not None
        self.confusion += counts.view(k, k).cpu()

    def compute(self) -> dict[str, float]:
        if self.confusion is None or int(self.confusion.sum()) == 0:
            return {"miou": _NAN, "pixel_accuracy": _NAN}
        confusion = self.confusion.double()  # rows: truth, columns: prediction
        hits = confusion.diag()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
        present = union > 0
        return {
            "miou": float((hits[present] / union[present]).mean()),
            "pixel_accuracy": float(hits.sum() / confusion.sum()),
        }


class DepthMetric(Metric):
    """Absolute and relative depth error over pixels with a valid (> 0) target."""

    kind = "depth"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0

    def update(self, output: Tensor, target: Tensor) -> None:
        output, target = self._prepare(output, target)
        valid = target > 0
        truth = target[valid].double()
        error = (output[valid].double() - truth).abs()
        self.abs_sum += float(error.sum())
        self.rel_sum += float((error / truth).sum())
        self.count += int(truth.numel())

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {"abs_err": _NAN, "rel_err": _NAN}
        return {"abs_err": self.abs_sum / self.count, "rel_err": self.rel_sum / self.count}


class NormalsMetric(Metric):
    """Angular error statistics of surface normals, in degrees.

    The median comes from a histogram with bins of ``1e-3`` degree (bounded
    memory however large the evaluation set), so it is exact to within half a
    bin; mean and threshold percentages are exact. Angles are computed in
    float64 as ``atan2(|p × g|, p · g)``, which unlike ``acos`` stays accurate
    for small angles. A zero prediction counts as 90°.
    """

    kind = "normals"
    BIN_DEGREES = 1e-3
    THRESHOLDS = (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0))

    def __init__(self) -> None:
        self._bins = round(180.0 / self.BIN_DEGREES)
        self.reset()

    def reset(self) -> None:
        self.histogram = torch.zeros(self._bins, dtype=torch.int64)
        self.angle_sum = 0.0
        self.count = 0
        self.within = {name: 0 for name, _ in self.THRESHOLDS}

    def update(self, output: Tensor, target: Tensor) -> None:
        output, target = self._prepare(output, target)
        valid = (target != 0).any(dim=1)  # N×H×W
        pred = output.double().movedim(1, -1)[valid]  # P×3
        truth = F.normalize(target.double().movedim(1, -1)[valid], dim=-1)
        pred_norm = pred.norm(dim=-1)
        pred = pred / pred_norm.clamp_min(1e-300).unsqueeze(-1)
        cross = torch.linalg.cross(pred, truth, dim=-1).norm(dim=-1)
        dot = (pred * truth).sum(dim=-1)
        angle = torch.rad2deg(torch.atan2(cross, dot))
        angle = torch.where(pred_norm > 0, angle, torch.full_like(angle, 90.0))
        index = (angle / self.BIN_DEGREES).long().clamp(0, self._bins - 1)
        self.histogram += torch.bincount(index, minlength=self._bins).cpu()
        self.angle_sum += float(angle.sum())
        self.count += int(angle.numel())
        for name, limit in self.THRESHOLDS:
            self.within[name] += int((angle < limit).sum())

    def _order_statistic(self, cumulative: Tensor, rank: int) -> float:
        """Centre of the bin holding the ``rank``-th smallest angle (0-based)."""
        index = int(torch.searchsorted(cumulative, torch.tensor(rank + 1)).item())
        return (index + 0.5) * self.BIN_DEGREES

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {name: _NAN for name in ("mean_angle", "median_angle", *self.within)}
        cumulative = self.histogram.cumsum(0)
        lower = self._order_statistic(cumulative, (self.count - 1) // 2)
        upper = self._order_statistic(cumulative, self.count // 2)
        values = {"mean_angle": self.angle_sum / self.count, "median_angle": (lower + upper) / 2}
        for name, hits in self.within.items():
            values[name] = 100.0 * hits / self.count
        return values


_FACTORIES: dict[str, Callable[[int | None], Metric]] = {
    "binary": lambda _: AccuracyMetric("binary"),
    "multiclass": lambda _: AccuracyMetric("multiclass"),
    "segmentation": SegmentationMetric,
    "depth": lambda _: DepthMetric(),
    "normals": lambda _: NormalsMetric(),
}


def create_metric(kind: str, num_classes: int | None = None) -> Metric:
    """A fresh accumulating metric for a task of this ``kind``.

    Args:
        kind: one of ``binary``, ``multiclass``, ``segmentation``, ``depth``,
            ``normals``.
        num_classes: only used by ``segmentation`` (inferred from the output
            channels when None); ignored otherwise.

    Raises:
        ConfigError: unknown ``kind`` (the message lists the kinds).
    """
    _check_kind(kind)
    return _FACTORIES[kind](num_classes)


def primary_metric(kind: str) -> tuple[str, bool]:
    """``(name, higher_is_better)`` of the headline utility metric of ``kind``."""
    _check_kind(kind)
    return PRIMARY_METRICS[kind]


assert set(_FACTORIES) == set(PRIMARY_METRICS) == set(LABEL_KINDS)
