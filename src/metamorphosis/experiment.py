"""From a config to a finished run dir: data, training phases, run files.

This is the one place the CLI's ``train`` and ``demo`` call; library users
can call :func:`train_run` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .data import build_datasets
from .rundir import write_run
from .train.checkpoint import CHECKPOINT_NAME
from .train.loop import Trainer
from .train.remote import TrainingHub

__all__ = ["train_run", "demo_config", "DEMO_CONFIG_PATH"]

DEMO_CONFIG_PATH = Path(__file__).with_name("demo.yaml")


def demo_config(overrides: Sequence[str] = ()) -> Config:
    """The embedded demo config (``demo.yaml`` beside this module), validated."""
    return load_config(DEMO_CONFIG_PATH, overrides)


def train_run(
    config: Config,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    progress: bool = True,
    remote: TrainingHub | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run dir ``out`` (resuming a checkpoint there).

    Returns the ``run.json`` record. The checkpoint is removed once the run
    dir is complete: the run dir then holds only the contract's files. With
    ``remote``, the heads of ``remote.tasks`` are trained by consumers in
    other processes (see :mod:`metamorphosis.serve.training`).
    """
    labels = config.all_labels
    data = build_datasets(config.data, labels, seed=config.train.seed, root=data_root)
    config = config.with_label_classes(data.num_classes)
    trainer = Trainer(config, data, out, progress=progress, remote=remote)
    result = trainer.fit()
    trainer.producer.cpu()  # a run dir is read on the CPU (load_producer contract)
    trainer.heads.cpu()
    record = write_run(out, config, trainer.producer, trainer.heads, result, data.transform)
    (Path(out) / CHECKPOINT_NAME).unlink(missing_ok=True)
    return record
