"""Release noise picked during training from a Fisher-information target (``release:``).

The trainer keeps a fixed set of training images (``release.calibration_images``,
drawn once from the train split with the run's seed) and, at the start of every epoch
and once more after training, measures each public task's release sensitivity there
(:func:`~metamorphosis.privacy.fisher.measure_sensitivity`) and sets its release noise
σ to the smallest value that meets the targets (:func:`~metamorphosis.privacy.fisher.
calibrate_sigmas`): the 95th-percentile dFIL per task, and of the sum over tasks. The
heads train with that noise on, so they learn to read what will be released.

The same images give the ``dfil`` statistics ``run.json`` records for every noisy
release, calibrated or not. They are *training* images: σ is a function of the training
data that no ε accounts for (``privacy/scope.py`` says so), and the audit measures the
bound again on test images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence, Sized
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import Config
from ..data.transforms import ImageTransform
from ..models.producer import Producer
from ..privacy.fisher import (
    QUANTILE,
    Sensitivity,
    calibrate_sigmas,
    has_bound,
    measure_sensitivity,
    producer_release,
    release_sigmas,
    set_release_sigmas,
    total_dfil,
    total_stats,
)

__all__ = ["ReleaseCalibrator", "calibration_pixels"]


def calibration_pixels(train: Dataset, transform: ImageTransform, count: int, seed: int) -> Tensor:
    """``count`` training images (fewer when the split is smaller), as pixels in [0, 1]:
    the same ones for the whole run (and on resume), drawn with ``seed``."""
    size = len(cast(Sized, train))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    images = torch.stack([train[int(i)][0] for i in order[: min(count, size)]])
    return transform.to_pixels(images)


class ReleaseCalibrator:
    """Sets and measures the release noise of a producer's public tasks.

    Args:
        config: the run's config (its ``release`` section).
        producer: the producer whose releases it sets (``Release.noise``).
        pixels: the calibration images in [0, 1] (:func:`calibration_pixels`).
        transform: the normalisation the producer's inputs get.
        device: where the producer lives.
    """

    def __init__(
        self,
        config: Config,
        producer: Producer,
        pixels: Tensor,
        transform: ImageTransform,
        device: torch.device,
    ) -> None:
        self.release = config.release
        self.producer = producer
        self.pixels = pixels.to(device)
        self.transform = transform
        self.tasks: list[str] = [spec.name for spec in config.tasks]
        self.seed = config.train.seed

    def calibrate(self) -> dict[str, Any]:
        """Measure, pick σ per task for the targets, and set it; the ``calibrate`` event."""
        started = time.perf_counter()
        sensitivities = self._measure(self.tasks, self.seed)
        sigmas = calibrate_sigmas(
            sensitivities, self.release.per_task_dfil, self.release.max_total_dfil
        )
        set_release_sigmas(self.producer, sigmas)
        record: dict[str, Any] = {
            "sigma": sigmas,
            "dfil_p95": {t: _p95(s.dfil(sigmas[t])) for t, s in sensitivities.items()},
            "total_dfil_p95": _p95(total_dfil(sensitivities, sigmas)),
        }
        record["seconds"] = round(time.perf_counter() - started, 3)
        return record

    def statistics(self) -> tuple[dict[str, dict[str, Any] | None], dict[str, Any] | None]:
        """``dfil`` per public task at the current σ (None: released without noise) and,
        when every task is noisy, the per-image total over them (colluding consumers)."""
        noisy = [t for t in self.tasks if has_bound(self.producer, t)]
        # other probes than calibration's: at its own probes the p95 is the target exactly
        sensitivities = self._measure(noisy, self.seed + 1)
        sigmas = release_sigmas(self.producer, noisy)
        entries: dict[str, dict[str, Any] | None] = {t: None for t in self.tasks}
        for task, sensitivity in sensitivities.items():
            entries[task] = {**sensitivity.stats(sigmas[task]).to_dict(), "split": "train"}
        if len(noisy) < len(self.tasks):
            return entries, None
        return entries, total_stats(sensitivities, sigmas)

    def _measure(self, tasks: Sequence[str], seed: int) -> dict[str, Sensitivity]:
        """Sensitivities at the calibration images, the producer in eval mode (no
        dropout, no fresh noise) and put back in the mode it was in."""
        was_training = self.producer.training
        self.producer.eval()
        try:
            return {
                task: measure_sensitivity(
                    producer_release(
                        self.producer, task, mean=self.transform.mean, std=self.transform.std
                    ),
                    self.pixels,
                    probes=self.release.probes,
                    seed=seed,
                )
                for task in tasks
            }
        finally:
            self.producer.train(was_training)


def _p95(values: Tensor) -> float:
    return float(torch.quantile(values.double(), QUANTILE))
