"""Datasets: one module per dataset, a registry, and the shared image transform.

``build_datasets(config.data, config.all_labels, seed=...)`` returns the
train / val / test splits; every item is ``(image, labels)`` with a float32
``3×H×W`` image and a ``dict`` of label tensors keyed by label name (see
:mod:`metamorphosis.data.base` for the tensor of each label kind).

Registered datasets: ``synthetic`` (embedded default, no files), ``celeba``,
``statefarm``, ``camvid``, ``nyuv2``, ``cityscapes``, ``csv`` (bring your
own images and a manifest) and ``packed`` (any of them decoded once by
``metamorphosis pack``, memory-mapped).
"""

from __future__ import annotations

from . import camvid, celeba, csv, npy_sets, packed, statefarm, synthetic  # noqa: F401  (registration)
from .base import IGNORE_INDEX, DatasetSplits, LabelledImageDataset, UnknownItemError
from .registry import build_datasets, list_datasets, register_dataset
from .synthetic import Scene, render_scene
from .transforms import ImageTransform

__all__ = [
    "IGNORE_INDEX",
    "DatasetSplits",
    "ImageTransform",
    "LabelledImageDataset",
    "Scene",
    "UnknownItemError",
    "build_datasets",
    "list_datasets",
    "register_dataset",
    "render_scene",
]
