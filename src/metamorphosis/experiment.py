"""From a config to a finished run dir: data, training phases, run files.

This is the one place the CLI's ``train`` and ``demo`` call; library users
can call :func:`train_run` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config, config_from_dict
from .data import build_datasets
from .rundir import write_run
from .train.checkpoint import CHECKPOINT_NAME
from .train.loop import Trainer

__all__ = ["train_run", "demo_config", "DEMO_CONFIG"]

# The embedded default of ``metamorphosis demo``: generated scenes, two public
# tasks and one private attribute, DP encoder + task privacy (mode ``both``),
# sized to finish in a few minutes on 2 CPU cores.
DEMO_CONFIG: dict[str, Any] = {
    "data": {
        "name": "synthetic",
        "image_size": 32,
        "num_samples": 2400,
        "val_fraction": 0.1,
        "test_fraction": 0.15,
    },
    "model": {"encoder": "resnet18-slim", "split_index": 5, "module": "cross-sec", "groups": 2},
    "tasks": [
        {"name": "colour", "column": "colour", "kind": "multiclass"},
        {"name": "count", "column": "count", "kind": "multiclass"},
    ],
    "private_attributes": [{"name": "background", "column": "background", "kind": "binary"}],
    "privacy": {
        "mode": "both",
        "target_epsilon": 8.0,
        "delta": 1.0e-5,
        "max_grad_norm": 1.0,
        "omega": 0.01,
        "accountant": "prv",
    },
    "train": {
        "epochs": 5,
        "encoder_epochs": 2,
        "batch_size": 64,
        "lr": 2.0e-3,
        "head_lr": 2.0e-3,
        "optimizer": "adamw",
        "seed": 0,
    },
}


def demo_config() -> Config:
    """The validated demo config."""
    return config_from_dict(DEMO_CONFIG)


def train_run(
    config: Config,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``config`` into the run dir ``out`` (resuming a checkpoint there).

    Returns the ``run.json`` record. The checkpoint is removed once the run
    dir is complete: the run dir then holds only the contract's files.
    """
    labels = config.all_labels
    data = build_datasets(config.data, labels, seed=config.train.seed, root=data_root)
    config = config.with_label_classes(data.num_classes)
    trainer = Trainer(config, data, out, progress=progress)
    result = trainer.fit()
    trainer.producer.cpu()  # a run dir is read on the CPU (load_producer contract)
    trainer.heads.cpu()
    record = write_run(out, config, trainer.producer, trainer.heads, result, data.transform)
    (Path(out) / CHECKPOINT_NAME).unlink(missing_ok=True)
    return record
