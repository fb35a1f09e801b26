"""Trade-off sweeps: utility and leakage vs ε (paper Fig. 7) and vs split index (Table 12).

Each point retrains the audited run's config with one value changed into
``RUN_DIR/audit/sweeps/<sweep>_<value>/`` (a complete run dir, resumable:
rerunning the audit reuses finished points and resumes interrupted ones),
then measures on it:

* utility: the test metrics recorded in the point's ``run.json``;
* leakage: for each private attribute, the best retrained head attacker over
  the public tasks' features (the audit's stronger protocol), with the
  audit's attack budget. Without private attributes, the best retrained
  attacker of each public task from the *other* tasks' features.

``ε = ∞`` means no DP noise: the point trains with mode ``task`` (SSIM term,
no DP-SGD) when the run used task privacy, else mode ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..config import MAX_TARGET_EPSILON, Config, config_from_dict, config_to_dict, same_config
from ..errors import ConfigError
from ..experiment import train_run
from ..metrics import primary_metric
from ..models.producer import build_network, count_parameters
from ..rundir import load_heads, load_producer, read_run_json
from .budget import AttackBudget
from .document import number
from .inputs import load_audit_data, resolve_device
from .swap import retrained_swap

__all__ = [
    "DEFAULT_VALUES",
    "SWEEPS",
    "check_sweeps",
    "check_points",
    "point_config",
    "run_sweeps",
    "sweep_table",
]

DEFAULT_VALUES: dict[str, tuple[float, ...]] = {
    "epsilon": (0.5, 1.0, 2.0, 4.0, 8.0, math.inf),
    "split": (5, 7, 8),
}
SWEEPS = tuple(DEFAULT_VALUES)


def point_config(config: Config, sweep: str, value: float, device: str) -> Config:
    """``config`` with the swept key set to ``value`` (and ``train.device``)."""
    raw = config_to_dict(config)
    raw["train"]["device"] = device
    privacy = raw["privacy"]
    if sweep == "epsilon":
        task_privacy = privacy["mode"] in ("task", "both")
        if math.isinf(value):
            privacy["mode"] = "task" if task_privacy else "none"
        else:
            privacy["mode"] = "both" if task_privacy else "input"
            privacy["target_epsilon"] = float(value)
            privacy["noise_multiplier"] = None
    elif sweep == "split":
        if float(value) != int(value):
            raise ConfigError(f"split index {value!r} is invalid: expected an integer")
        raw["model"]["split_index"] = int(value)
    else:
        raise ConfigError(f"sweep {sweep!r} is unknown: expected one of {list(SWEEPS)}")
    return config_from_dict(raw)


def _value_label(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:g}"


def _train_point(
    config: Config, out: Path, data_root: str | Path | None, progress: bool
) -> dict[str, Any]:
    """Train a sweep point, or reuse a finished one trained from the same config."""
    if not (out / "run.json").exists():
        return train_run(config, out, data_root=data_root, progress=progress)
    record = read_run_json(out)
    if not same_config(config_from_dict(record["config"]), config):
        raise ConfigError(
            f"{out} holds a sweep point trained from another config; delete it to retrain"
        )
    return record


def _leakage(
    point_dir: Path,
    record: dict[str, Any],
    config: Config,
    *,
    data_root: str | Path | None,
    budget: AttackBudget,
    device: str,
    seed: int,
    progress: bool,
) -> dict[str, float]:
    """Best retrained attacker per attacked label over the public tasks' features."""
    torch_device = resolve_device(device)
    train, test = load_audit_data(
        point_dir,
        record,
        config,
        data_root=data_root,
        budget=budget,
        seed=seed,
        device=torch_device,
        progress=progress,
    )
    tasks = list(record["tasks"])
    private = [s for s in config.all_labels if s.name in record["private_attributes"]]
    targets = private or [s for s in config.all_labels if s.name in tasks]
    network = build_network(config)
    hw = (int(record["input_shape"][1]), int(record["input_shape"][2]))
    result = retrained_swap(
        lambda spec: network.make_head(spec, hw),
        targets,
        train,
        test,
        sources=tasks,
        budget=budget,
        seed=seed,
        device=torch_device,
        progress=progress,
    )
    leakage = {}
    for spec in targets:
        higher = primary_metric(spec.kind)[1]
        cells = [result.matrix[t][spec.name] for t in tasks if t != spec.name]
        if cells:
            leakage[spec.name] = max(cells) if higher else min(cells)
    return leakage


def _size_mb(module) -> float:
    return 4 * count_parameters(module) / 1e6


def _point(
    run_dir: Path, config: Config, sweep: str, value: float, **options: Any
) -> dict[str, Any]:
    out = run_dir / "audit" / "sweeps" / f"{sweep}_{_value_label(value)}"
    point = point_config(config, sweep, value, options["device"])
    record = _train_point(point, out, options["data_root"], options["progress"])
    producer, heads = load_producer(out), load_heads(out)
    kinds = {spec.name: spec.kind for spec in point.all_labels}
    return {
        "value": None if math.isinf(value) else value,
        "run_dir": str(out),
        "epsilon": record["privacy"]["epsilon"],
        "noise_multiplier": record["privacy"]["noise_multiplier"],
        "feature_shape": next(iter(record["feature_shapes"].values())),
        "producer_mb": _size_mb(producer),
        "consumer_mb": _size_mb(heads[record["tasks"][0]]),
        "utility": {
            task: record["metrics"][task][primary_metric(kinds[task])[0]]
            for task in record["tasks"]
        },
        "leakage": _leakage(out, record, point, **options),
        "train_seconds": record.get("train_seconds"),
    }


def sweep_table(sweep: str, points: Sequence[Mapping[str, Any]], config: Config) -> dict[str, Any]:
    """The header and rows of a sweep's table (``points`` as :func:`run_sweeps` records them)."""
    kinds = {s.name: s.kind for s in config.all_labels}
    tasks = list(points[0]["utility"])
    leaks = list(points[0]["leakage"])
    header = [
        "ε" if sweep == "epsilon" else "split",
        "measured ε",
        "feature shape",
        "producer MB",
        "consumer MB",
    ]
    header += [f"{t} (utility)" for t in tasks] + [f"{a} (leakage)" for a in leaks]
    rows = []
    for p in points:
        value = "∞" if p["value"] is None else f"{p['value']:g}"
        eps = "—" if p["epsilon"] is None else f"{p['epsilon']:.3g}"
        row = [
            value,
            eps,
            "×".join(map(str, p["feature_shape"])),
            f"{p['producer_mb']:.3g}",
            f"{p['consumer_mb']:.3g}",
        ]
        row += [number(primary_metric(kinds[t])[0], p["utility"][t]) for t in tasks]
        row += [number(primary_metric(kinds[a])[0], p["leakage"][a]) for a in leaks]
        rows.append(row)
    return {"header": header, "rows": rows}


def _plot(sweep: str, points: Sequence[Mapping[str, Any]], path: Path) -> None:
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    axes = figure.subplots()
    finite = [p["value"] for p in points if p["value"] is not None]
    infinity = (max(finite) * 2.0) if finite else 1.0
    xs = [infinity if p["value"] is None else p["value"] for p in points]
    for name in points[0]["utility"]:
        axes.plot(xs, [p["utility"][name] for p in points], "o-", label=f"{name} (utility)")
    for name in points[0]["leakage"]:
        axes.plot(xs, [p["leakage"][name] for p in points], "s--", label=f"{name} (leakage)")
    labels = ["∞" if p["value"] is None else f"{p['value']:g}" for p in points]
    if sweep == "epsilon":
        axes.set_xscale("log")
        axes.minorticks_off()
    axes.set_xticks(xs, labels)
    axes.set_xlabel("target ε" if sweep == "epsilon" else "split index")
    axes.set_ylabel("test metric")
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=110)


_DESCRIPTIONS = {
    "epsilon": "Utility and leakage vs the target ε of the producer's DP training (paper "
    "Fig. 7); ∞ trains without DP noise. Each point retrains the run's config.",
    "split": "Utility, leakage and sizes vs the split index (paper Table 12). Each point "
    "retrains the run's config with that split.",
}


def check_sweeps(names: Sequence[str], values: Mapping[str, Sequence[float]]) -> None:
    """Refuse unknown sweeps, values for sweeps not asked for, and values no point can
    take, before any expensive work starts."""
    for name in [*names, *values]:
        if name not in SWEEPS:
            raise ConfigError(f"sweep {name!r} is unknown: expected one of {list(SWEEPS)}")
    for name, points in values.items():
        if name not in names:
            raise ConfigError(f"values given for sweep {name!r}, which is not asked for")
        if not points:
            raise ConfigError(f"sweep {name!r} has no values")
        for value in points:
            _check_value(name, value)


def _check_value(sweep: str, value: float) -> None:
    if sweep == "epsilon":
        # inf is a point without DP noise (see the module docstring); nan, 0 and < 0 mean nothing
        ok = value == math.inf or (math.isfinite(value) and 0 < value <= MAX_TARGET_EPSILON)
        allowed = f"a number in (0, {MAX_TARGET_EPSILON:g}] or inf (a run without DP)"
    else:
        ok = math.isfinite(value) and value == int(value) and value >= 1
        allowed = "an integer >= 1"
    if not ok:
        raise ConfigError(f"sweep {sweep!r} value {value:g} is invalid: expected {allowed}")


def check_points(
    config: Config, names: Sequence[str], values: Mapping[str, Sequence[float]]
) -> None:
    """Build every point's config (and, for splits, its network), so a split index the
    encoder does not have fails now, not after the points before it trained for minutes."""
    check_sweeps(names, values)
    for sweep in dict.fromkeys(names):
        for value in values.get(sweep, DEFAULT_VALUES[sweep]):
            try:
                point = point_config(config, sweep, float(value), "cpu")
                if sweep == "split":
                    build_network(point)
            except ConfigError as exc:
                raise ConfigError(f"sweep {sweep!r} value {value:g}: {exc}") from exc


def run_sweeps(
    run_dir: Path,
    config: Config,
    names: Sequence[str],
    *,
    values: Mapping[str, Sequence[float]],
    data_root: str | Path | None,
    budget: AttackBudget,
    device: str,
    seed: int,
    progress: bool,
    out_dir: Path,
) -> dict[str, Any]:
    """Every requested sweep as a report section: description, table, figure, raw points."""
    check_points(config, names, values)
    sections = {}
    for sweep in dict.fromkeys(names):
        options = {
            "data_root": data_root,
            "budget": budget,
            "device": device,
            "seed": seed,
            "progress": progress,
        }
        points = [
            _point(run_dir, config, sweep, float(v), **options)
            for v in values.get(sweep, DEFAULT_VALUES[sweep])
        ]
        figure = f"sweep_{sweep}.png"
        _plot(sweep, points, out_dir / figure)
        sections[sweep] = {
            "description": _DESCRIPTIONS[sweep],
            **sweep_table(sweep, points, config),
            "figure": figure,
            "caption": f"Utility and leakage across the {sweep} sweep",
            "points": points,
        }
    return sections
