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
from typing import Any, TypedDict

import torch

from ..config import MAX_SEED, Config, config_from_dict
from ..errors import ConfigError, RunDirError
from ..models.producer import build_network
from ..rundir import (
    HEADS_FILE,
    PRODUCER_FILE,
    load_heads,
    load_producer,
    read_run_json,
    read_weights,
)
from . import attribute, reconstruction, swap, tsne
from .budget import AttackBudget, budget_named
from .cost import producer_cost
from .features import ENCODER_SOURCE, FeatureSet
from .inputs import load_audit_data, resolve_device
from .report import findings, plot_attribute, plot_swap, write_report
from .sweeps import check_points, check_sweeps, run_sweeps

__all__ = ["AUDIT_DIR", "REPORT_VERSION", "run_audit"]

AUDIT_DIR = "audit"
REPORT_VERSION = 1

Log = Callable[[str], None]

ASSUMPTIONS = {
    "kept_heads": swap.KEPT_HEADS_ASSUMPTION,
    "retrained": swap.RETRAINED_ASSUMPTION,
    "attribute": attribute.ASSUMPTION,
    "reconstruction": reconstruction.ASSUMPTION,
    "tsne": tsne.ASSUMPTION,
}
"""What each measurement assumes about the attacker, as the report states it."""


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
        sweeps: any of ``epsilon`` and ``split``: retrain the run's config
            across those values (expensive) and add their tables.
        sweep_values: the values of each sweep (defaults: the paper's).
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
    audit = _Audit(run_dir, record, config, train, test, budget, torch_device, seed, progress)
    report = {
        "version": REPORT_VERSION,
        "run_dir": str(run_dir),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": _run_summary(record, config),
        "budget": budget.to_dict(),
        "seed": seed,
        "device": str(torch_device),
        "data": {"train_items": len(train), "test_items": len(test), "split": "test"},
        "majority": audit.majority(),
        "assumptions": ASSUMPTIONS,
        **audit.measure(stage, out_dir),
    }
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


class _AttackOptions(TypedDict):
    budget: AttackBudget
    device: torch.device
    seed: int


class _Audit:
    """The measurements of one audit over features already extracted."""

    def __init__(
        self,
        run_dir: Path,
        record: dict[str, Any],
        config: Config,
        train: FeatureSet,
        test: FeatureSet,
        budget: AttackBudget,
        device: torch.device,
        seed: int,
        progress: bool,
    ) -> None:
        self.run_dir, self.train, self.test = run_dir, train, test
        self.labels = list(config.all_labels)
        self.tasks = list(record["tasks"])
        self.private = [s for s in self.labels if s.name in record["private_attributes"]]
        self.network = build_network(config)
        self.hw = (int(record["input_shape"][1]), int(record["input_shape"][2]))
        self.budget, self.device, self.seed, self.progress = budget, device, seed, progress

    @property
    def _attack(self) -> _AttackOptions:
        return {"budget": self.budget, "device": self.device, "seed": self.seed}

    def majority(self) -> dict[str, float | None]:
        return {
            spec.name: attribute.majority_rate(
                spec, self.train.targets[spec.name], self.test.targets[spec.name]
            )
            for spec in self.labels
        }

    def measure(self, stage: _Stages, out_dir: Path) -> dict[str, Any]:
        """Every attack and measurement, with its figure written to ``out_dir``."""
        sources = [ENCODER_SOURCE, *self.tasks]  # what an attacker can hold
        heads = dict(load_heads(self.run_dir))  # read once: the kept-head swap and the cost
        with stage("swap (kept heads)"):
            kept = swap.kept_head_swap(heads, self.labels, self.test, device=self.device)
        with stage("swap (retrained attackers)"):
            retrained = swap.retrained_swap(
                lambda spec: self.network.make_head(spec, self.hw),
                self.labels,
                self.train,
                self.test,
                sources=sources,
                progress=self.progress,
                **self._attack,
            )
        with stage("attribute inference"):
            rows = attribute.attribute_inference(
                retrained, self.tasks, self.private, self.train, self.test, **self._attack
            )
        with stage("reconstruction"):
            recon = reconstruction.reconstruction_attack(
                self.train,
                self.test,
                sources=sources,
                width=self.budget.decoder_width,
                progress=self.progress,
                **self._attack,
            )
        with stage("t-SNE"):
            embedding, similarity = self._compare_modules(out_dir)
        with stage("producer cost"):
            cost = producer_cost(load_producer(self.run_dir), heads)
        swaps = {"kept_heads": kept.to_dict(), "retrained": retrained.to_dict()}
        plot_swap(swaps, out_dir / "swap_matrix.png")
        plot_attribute([r.to_dict() for r in rows], out_dir / "attribute_inference.png")
        reconstruction.plot_reconstructions(recon, out_dir / "reconstruction.png")
        return {
            "swap": swaps,
            "attribute_inference": [r.to_dict() for r in rows],
            "reconstruction": recon.to_dict(),
            "tsne": embedding,
            "similarity": similarity,
            "cost": cost,
        }

    def _compare_modules(self, out_dir: Path) -> tuple[dict | None, dict]:
        """t-SNE and pairwise similarity of every module's features (needs two modules)."""
        names = [spec.name for spec in self.labels]
        if len(names) < 2:
            return None, {}
        classes = [s.name for s in (*self.private, *self.labels) if not s.is_dense]
        color = classes[0] if classes else None  # t-SNE points take one class per item
        embedding = tsne.tsne_embedding(
            self.test, names, items=self.budget.tsne_items, seed=self.seed, color_label=color
        )
        tsne.plot_tsne(embedding, out_dir / "tsne.png")
        return embedding.to_dict(), tsne.feature_similarity(self.test, names)
