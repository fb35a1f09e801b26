"""What every measurement reads: the device attackers train on and the run's features.

Shared by the audit (:mod:`.run`) and the sweeps (:mod:`.sweeps`), which audit
each retrained point the same way; here rather than in either so that neither
imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data import build_datasets
from ..data.transforms import ImageTransform
from ..errors import ConfigError, RunDirError
from ..rundir import load_producer
from .budget import AttackBudget
from .features import FeatureSet, extract_features

__all__ = ["resolve_device", "load_audit_data"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``, ``cuda`` and ``cuda:N`` are taken as asked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or name.startswith("cuda:")):
        raise ConfigError(f"device {name!r} is invalid: expected auto, cpu, cuda or cuda:N")
    if name != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is invalid: {exc}") from None


def load_audit_data(
    run_dir: Path,
    record: dict[str, Any],
    config: Config,
    *,
    data_root: str | Path | None,
    budget: AttackBudget,
    seed: int,
    device: torch.device,
    progress: bool,
) -> tuple[FeatureSet, FeatureSet]:
    """Train and test features of every source, on the run's own splits."""
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed, root=data_root)
    if list(data.input_shape) != list(record["input_shape"]):
        raise RunDirError(
            f"the data gives images of shape {list(data.input_shape)} but {run_dir} was trained "
            f"on {record['input_shape']}; check --data-root and data.image_size"
        )
    transform = ImageTransform.from_dict(record["transform"])
    producer = load_producer(run_dir).to(device)
    names = [spec.name for spec in config.all_labels]
    train, test = (
        extract_features(
            producer,
            split,
            names=names,
            mean=transform.mean,
            std=transform.std,
            limit=limit,
            seed=seed,
            device=device,
            progress=progress,
            description=f"{name} features",
        )
        for name, split, limit in (
            ("train", data.train, budget.train_items),
            ("test", data.test, budget.test_items),
        )
    )
    return train, test
