"""From a config to a finished run dir: data, training phases, run files.

This is the one place the CLI's ``train``, ``demo`` and ``add-task`` call;
library users can call :func:`train_run` and :func:`add_task` directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, LabelSpec, config_from_dict, is_finite_number, load_config
from .data import build_datasets
from .errors import ConfigError, RunDirError
from .privacy.accounting import DPPhase
from .rundir import HEADS_FILE, PRODUCER_FILE, read_run_json, read_weights, write_run
from .train.checkpoint import CHECKPOINT_NAME
from .train.distributed import distributed_world_size, from_environment
from .train.loop import Trainer
from .train.methods import PhasePlan, resolve_method
from .train.remote import TrainingHub

__all__ = ["train_run", "add_task", "demo_config", "DEMO_CONFIG_PATH"]

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

    Returns the ``run.json`` record (``{}`` on ranks other than 0 under torchrun,
    which write nothing). The checkpoint is removed once the run
    dir is complete: the run dir then holds only the contract's files. With
    ``remote``, the heads of ``remote.tasks`` are trained by consumers in
    other processes (see :mod:`metamorphosis.serve.training`).
    """
    _check_device(config)
    method = resolve_method(config)  # the method, its options and rules, before any data
    world_size = distributed_world_size()
    method.check_distributed(world_size)
    if world_size > 1 and remote is not None:
        raise ConfigError("--remote trains in one process: start it without torchrun")
    distributed = from_environment(config.train.device)  # joins torchrun's process group
    labels = config.all_labels
    data = build_datasets(config.data, labels, seed=config.train.seed, root=data_root)
    config = config.with_label_classes(data.num_classes)
    trainer = Trainer(
        config,
        data,
        out,
        progress=progress and distributed.is_main,
        remote=remote,
        distributed=distributed,
    )
    result = trainer.fit()
    record: dict[str, Any] = {}
    if distributed.is_main:  # the run dir is rank 0's alone
        trainer.producer.cpu()  # a run dir is read on the CPU (load_producer contract)
        trainer.heads.cpu()
        extra = {"distributed": distributed.record()}
        record = write_run(
            out, config, trainer.producer, trainer.heads, result, data.transform, extra
        )
        (Path(out) / CHECKPOINT_NAME).unlink(missing_ok=True)
    distributed.finish()  # every rank leaves once the run dir is whole
    return record


def add_task(
    run_dir: str | Path,
    spec: LabelSpec,
    *,
    epochs: int | None = None,
    omega: float | None = None,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Add the public task ``spec`` to a finished MetaMorphosis run without retraining it.

    Only the new task's module and head train, for ``epochs`` (default: the
    run's ``train.epochs``), against the frozen encoder, with the run's SSIM
    term (or weight ``omega``) between the new module and every existing one
    (private ones included). With DP, the run's noise multiplier and sample
    rate are kept and ε is the composition of the run's phases and this one. The encoder
    and the existing modules and heads are not touched, so existing tasks'
    features stay bit-identical. The run dir (or ``out``) is rewritten with
    the new task; ``run.json`` lists each addition under ``added_tasks``.

    Returns:
        The new ``run.json`` record.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    record = read_run_json(run_dir)
    config = config_from_dict(record["config"])
    _check_addable(config, spec)
    if epochs is not None and (
        not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1
    ):
        raise ConfigError(f"epochs={epochs!r} is invalid: expected an integer >= 1")
    added_omega = _added_omega(config.privacy, omega)  # checked before any data is read
    _check_device(config)
    extended = dataclasses.replace(config, tasks=(*config.tasks, spec))
    data = build_datasets(
        extended.data, extended.all_labels, seed=config.train.seed, root=data_root
    )
    extended = extended.with_label_classes(data.num_classes)
    privacy = config.privacy
    phase = PhasePlan(
        name=f"add-{spec.name}",
        labels=(spec.name,),
        train_encoder=False,
        dp=privacy.uses_dp,
        omega=added_omega,
        epochs=epochs or config.train.epochs,
        compared=tuple(s.name for s in config.all_labels),
    )
    trainer = Trainer(
        extended,
        data,
        out,
        progress=progress,
        phases=[phase],
        noise_multiplier=record["privacy"]["noise_multiplier"],
        prior_dp_phases=[DPPhase(**p) for p in record["privacy"]["phases"]],
    )
    _load_except(trainer.producer, run_dir / PRODUCER_FILE, f"task_modules.{spec.name}.")
    _load_except(trainer.heads, run_dir / HEADS_FILE, f"{spec.name}.")
    result = trainer.fit()
    trainer.producer.cpu()
    trainer.heads.cpu()
    added = {
        "task": spec.name,
        "epochs": phase.epochs,
        "omega": phase.omega,
        "seconds": round(result.seconds, 2),
        "epsilon_before": record["privacy"]["epsilon"],
        "epsilon_after": result.epsilon,
    }
    extra = {
        "train_seconds": round(record.get("train_seconds", 0.0) + result.seconds, 2),
        "added_tasks": [*record.get("added_tasks", []), added],
    }
    new_record = write_run(
        out, extended, trainer.producer, trainer.heads, result, data.transform, extra
    )
    (out / CHECKPOINT_NAME).unlink(missing_ok=True)
    return new_record


def _added_omega(privacy, omega: float | None) -> float:
    if omega is None:
        return privacy.omega if privacy.uses_task_privacy else 0.0
    if not is_finite_number(omega) or omega < 0:
        raise ConfigError(f"omega={omega!r} is invalid: expected a finite number >= 0")
    return float(omega)


def _check_device(config: Config) -> None:
    """A CUDA run on a machine without CUDA fails in the first ``.to()``: say so up front."""
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device='cuda' is invalid here: CUDA is not available; use cpu or auto"
        )


def _check_addable(config: Config, spec: LabelSpec) -> None:
    if not resolve_method(config).add_task or config.module_kind == "identity":
        raise ConfigError(
            f"add-task needs a MetaMorphosis run with task modules; this run is "
            f"method={config.method!r}, privacy.mode={config.privacy.mode!r} (one shared "
            "feature for every task: retrain it with the new task instead)"
        )
    if config.has_release_stage:  # the eraser and the release key cover the tasks trained
        raise ConfigError(
            "add-task on a run with a defence (defence.bottleneck_channels, noise, erase or "
            "release targets) is not supported: retrain the run with the new task"
        )
    names = [s.name for s in config.all_labels]
    if spec.name in names:
        raise ConfigError(f"task {spec.name!r} already exists in this run: {names}")


def _load_except(module: nn.Module, path: Path, new_prefix: str) -> None:
    """The run's weights into ``module``; only the new task's (``new_prefix``) may be absent."""
    state = read_weights(path)
    expected = module.state_dict()
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if wrong:
        raise RunDirError(f"{path}: {wrong[0]} has a shape the run's config does not give")
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(new_prefix)]
    if missing or result.unexpected_keys:
        raise RunDirError(
            f"{path} does not fit the run's config: missing {missing[:2]}, "
            f"unexpected {result.unexpected_keys[:2]}"
        )
