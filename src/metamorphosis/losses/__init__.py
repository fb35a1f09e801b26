"""Losses: per-sample task losses, SSIM / MS-SSIM and the task-privacy penalty.

Every function returns one value per sample (shape (N,)); callers reduce. This
keeps DP-SGD's per-sample gradient clipping exact.
"""

from __future__ import annotations

from .ssim import (
    MS_SSIM_WEIGHTS,
    SSIM_WINDOWS,
    fit_window,
    ms_ssim_num_scales,
    ms_ssim_per_sample,
    ssim_per_sample,
)
from .task_privacy import SIMILARITIES, mean_pairwise_similarity, task_privacy_loss
from .tasks import IGNORE_INDEX, TASK_KINDS, check_task_pair, task_loss

__all__ = [
    "IGNORE_INDEX",
    "MS_SSIM_WEIGHTS",
    "SIMILARITIES",
    "SSIM_WINDOWS",
    "TASK_KINDS",
    "check_task_pair",
    "fit_window",
    "mean_pairwise_similarity",
    "ms_ssim_num_scales",
    "ms_ssim_per_sample",
    "ssim_per_sample",
    "task_loss",
    "task_privacy_loss",
]
