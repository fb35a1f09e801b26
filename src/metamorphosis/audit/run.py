"""``metamorphosis audit``: from a finished run dir to ``RUN_DIR/audit/``.

The audit reads only the run dir (weights, resolved config, transform) and
the dataset the config names. It extracts every feature source once per
split, runs the attacks on one declared budget, and writes the report with
its figures. Everything is seeded, so the same command gives the same numbers
on the same machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..config import MAX_SEED, Config, config_from_dict
from ..errors import ConfigError, RunDirError
from ..models.producer import build_network
from ..rundir import (
    HEADS_FILE,
    PRODUCER_FILE,
    load_heads,
    read_run_json,
    read_weights,
)
from .attacks.base import AuditContext
from .attribute import majority_rate
from .budget import AttackBudget, budget_named
from .features import FeatureSet
from .inputs import load_audit_data, resolve_device
from .measurements import default_measurements
from .report import findings, write_report
from .sweeps import check_points, check_sweeps, run_sweeps

__all__ = ["AUDIT_DIR", "REPORT_VERSION", "run_audit"]

AUDIT_DIR = "audit"
REPORT_VERSION = 3
"""3: adds ``dfil`` (the Fisher-information bound per public task), ``dfil_total`` and
``dfil_cost``, and ``run.privacy_scope`` / ``run.private_heads`` (from ``run.json``).
2: adds ``leakage`` (the best attacker per source and label), attackers
with restarts and early stopping; ``assumptions`` keyed by attack and attacker name;
``leakage.png`` replaces ``attribute_inference.png``."""

Log = Callable[[str], None]


def _run_summary(record: dict[str, Any], config: Config) -> dict[str, Any]:
    privacy = record["privacy"]
    return {
        "dataset": config.data.name,
        "encoder": config.model.encoder,
        "split_index": config.model.split_index,
        "method": config.method,
        "module": config.module_kind,  # the one trained: identity in mode none and baselines
        "mode": privacy["mode"],
        "epsilon": privacy["epsilon"],
        "delta": privacy["delta"],
        "private_heads": bool(privacy.get("private_heads", False)),
        # what epsilon and the release bound cover (run dirs before it: none recorded)
        "privacy_scope": privacy.get("scope"),
        "tasks": list(record["tasks"]),
        "private_attributes": list(record["private_attributes"]),
        "feature_shapes": record["feature_shapes"],
        "train_metrics": record["metrics"],
    }


def _check_seed(seed: Any) -> None:
    # NumPy, scikit-learn's t-SNE and torch all take it: non-negative and below 2**32
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer in [0, {MAX_SEED}]")


class _Stages:
    """Logs each stage as it starts and records how long it took."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.log(f"audit: {name} …")
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)


def run_audit(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    budget: str | AttackBudget = "full",
    device: str = "auto",
    seed: int = 0,
    sweeps: Sequence[str] = (),
    sweep_values: Mapping[str, Sequence[float]] | None = None,
    progress: bool = True,
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """Audit a finished run; writes ``RUN_DIR/audit/`` and returns the report dict.

    Args:
        run_dir: a finished run dir (``run.json`` and weights present).
        data_root: the dataset folder, overriding the config's ``data.root``.
        budget: ``full``, ``quick`` or an :class:`AttackBudget`.
        device: ``auto``, ``cpu`` or ``cuda``; where attackers train.
        seed: seeds the subsets, the attackers and t-SNE.
        sweeps: presets ``epsilon`` and ``split``, or ``KEY=V1,V2,...`` over any
            config key (as ``--set``): retrain the run's config across those
            values (expensive) and add their tables (:mod:`.sweeps`).
        sweep_values: the values of each preset (defaults: the paper's).
        progress: show progress bars.
        log: receives one line per stage.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    _check_seed(seed)
    check_sweeps(sweeps, sweep_values or {})
    record = read_run_json(run_dir)
    for name in (PRODUCER_FILE, HEADS_FILE):  # damaged weights fail now, not after extraction
        read_weights(run_dir / name)
    config = config_from_dict(record["config"])
    check_points(config, sweeps, sweep_values or {})
    budget = budget_named(budget) if isinstance(budget, str) else budget
    torch_device = resolve_device(device)
    out_dir = run_dir / AUDIT_DIR
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file named audit, or a read-only run dir
        raise RunDirError(f"cannot write the audit into {out_dir}: {exc.strerror}") from exc
    stage = _Stages(log)
    with stage("features"):
        train, test = load_audit_data(
            run_dir,
            record,
            config,
            data_root=data_root,
            budget=budget,
            seed=seed,
            device=torch_device,
            progress=progress,
        )
    measurements = default_measurements()
    context = _context(
        run_dir,
        record,
        config,
        (train, test),
        out_dir=out_dir,
        budget=budget,
        device=torch_device,
        seed=seed,
        progress=progress,
    )
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "run_dir": str(run_dir),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": _run_summary(record, config),
        "budget": budget.to_dict(),
        "seed": seed,
        "device": str(torch_device),
        "data": {"train_items": len(train), "test_items": len(test), "split": "test"},
        "majority": {
            spec.name: majority_rate(spec, train.targets[spec.name], test.targets[spec.name])
            for spec in context.labels
        },
        "assumptions": {k: v for m in measurements for k, v in m.assumptions().items()},
    }
    for measurement in measurements:
        with stage(measurement.stage):
            report.update(measurement.measure(context, report))
    if sweeps:
        with stage("sweeps"):
            report["sweeps"] = run_sweeps(
                run_dir,
                config,
                sweeps,
                values=sweep_values or {},
                data_root=data_root,
                budget=budget,
                device=device,
                seed=seed,
                progress=progress,
                out_dir=out_dir,
            )
    report["findings"] = findings(report)
    report["seconds"] = {**stage.seconds, "total": round(time.perf_counter() - started, 2)}
    write_report(report, out_dir)
    return report


def _context(
    run_dir: Path,
    record: dict[str, Any],
    config: Config,
    splits: tuple[FeatureSet, FeatureSet],
    *,
    out_dir: Path,
    budget: AttackBudget,
    device: torch.device,
    seed: int,
    progress: bool,
) -> AuditContext:
    """What every attack reads: the run's features, labels, consumer architecture and heads."""
    network = build_network(config)
    hw = (int(record["input_shape"][1]), int(record["input_shape"][2]))
    labels = tuple(config.all_labels)
    return AuditContext(
        run_dir=run_dir,
        out_dir=out_dir,
        train=splits[0],
        test=splits[1],
        labels=labels,
        tasks=tuple(record["tasks"]),
        private=tuple(s for s in labels if s.name in record["private_attributes"]),
        make_head=lambda spec: network.make_head(spec, hw, code_size=config.defence.code_size),
        heads=dict(load_heads(run_dir)),  # read once: the kept-head swap and the cost
        budget=budget,
        device=device,
        seed=seed,
        progress=progress,
    )
