"""Trade-off sweeps: utility and leakage as one config value changes.

A sweep is a preset, ``epsilon`` (paper Fig. 7) or ``split`` (Table 12), or
``KEY=V1,V2,...`` over any dotted config key, with the syntax and YAML values
of ``--set`` (``privacy.omega=0.0001,0.001,0.01``, ``method=universal,kd-mtl``).
Each point retrains the audited run's config with that one value changed into
``RUN_DIR/audit/sweeps/<key>_<value>/`` (a complete run dir, resumable:
rerunning the audit reuses finished points and resumes interrupted ones),
then measures on it:

* utility: the test metrics recorded in the point's ``run.json``;
* leakage: for each private attribute, the best attacker (every attacker of
  the audit, every restart) over the public tasks' features, with the audit's
  attack budget. Without private attributes, the best attacker of each
  public task from the *other* tasks' features.

``ε = ∞`` means no DP noise: the point trains with mode ``task`` (SSIM term,
no DP-SGD) when the run used task privacy, else mode ``none``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from ..config import (
    MAX_TARGET_EPSILON,
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    same_config,
)
from ..errors import ConfigError
from ..experiment import train_run
from ..metrics import primary_metric
from ..models.producer import build_network, count_parameters
from ..rundir import load_heads, load_producer, read_run_json
from ..train.methods import resolve_method
from .attacks.leakage import best_of, measure_leakage
from .budget import AttackBudget
from .document import number
from .inputs import load_audit_data, resolve_device

__all__ = [
    "DEFAULT_VALUES",
    "SWEEPS",
    "Sweep",
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
SWEEPS = tuple(DEFAULT_VALUES)  # the presets; any dotted config key is a sweep too
_HEADERS = {"epsilon": "ε", "split": "split"}


@dataclass(frozen=True)
class Sweep:
    """One sweep: a preset (``epsilon``, ``split``) or a dotted config key, and its values."""

    key: str
    values: tuple[Any, ...]

    @property
    def preset(self) -> bool:
        return self.key in SWEEPS


def parse_sweep(item: str, values: Mapping[str, Sequence[float]]) -> Sweep:
    """``epsilon`` / ``split`` (values from ``values`` or the defaults), ``epsilon=1,4,inf``,
    or ``KEY=V1,V2,...`` for any dotted config key (each value read as YAML, as ``--set``)."""
    key, sep, text = (item or "").partition("=")
    key = key.strip()
    if not sep:
        if key not in SWEEPS:
            raise ConfigError(
                f"sweep {key!r} is unknown: expected one of {list(SWEEPS)} or "
                "KEY=V1,V2,... over a config key (as --set, e.g. privacy.omega=0.001,0.01)"
            )
        return Sweep(key, tuple(values.get(key, DEFAULT_VALUES[key])))
    texts = [t.strip() for t in text.split(",") if t.strip()]
    if not key or not texts:
        raise ConfigError(f"sweep {item!r} is invalid: expected KEY=V1,V2,... with values")
    if key in values:
        raise ConfigError(f"sweep {key!r} has values twice: in --sweep and in --values")
    if key in SWEEPS:  # numbers, as --values reads them (inf: a point without DP)
        try:
            return Sweep(key, tuple(float(t) for t in texts))
        except ValueError:
            raise ConfigError(f"sweep {item!r}: {key} values must be numbers") from None
    try:
        parsed = tuple(_yaml_value(t) for t in texts)
    except yaml.YAMLError:
        raise ConfigError(f"sweep {item!r}: a value is not valid YAML") from None
    return Sweep(key, parsed)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _yaml_value(text: str) -> Any:
    """A value as ``--set`` reads it; ``1e-2`` (which YAML 1.1 keeps a string) as a number."""
    return float(text) if _NUMBER.fullmatch(text) and "e" in text.lower() else yaml.safe_load(text)


def point_config(config: Config, sweep: str, value: Any, device: str) -> Config:
    """``config`` with the swept key set to ``value`` (and ``train.device``)."""
    raw = config_to_dict(config)
    raw["train"]["device"] = device
    if sweep not in SWEEPS:  # any config key, set as --set sets it
        return config_from_dict(apply_overrides(raw, [f"{sweep}={json.dumps(value)}"]))
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
    return config_from_dict(raw)


def _value_text(value: Any) -> str:
    """How a point's value reads in tables and on axes: ``∞`` for no DP, ``4``, ``kd-mtl``."""
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def _value_label(value: Any) -> str:
    """The value in a point's folder name (``inf`` for ∞; other characters as ``_``)."""
    text = "inf" if _value_text(value) == "∞" else _value_text(value)
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


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
    """The best attacker per attacked label over the public tasks' features."""
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
    result = measure_leakage(
        lambda spec: network.make_head(spec, hw, code_size=config.defence.code_size),
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
        bests = {e.source: e.best[1] for e in result.entries if e.label == spec.name}
        if bests:
            higher = primary_metric(spec.kind)[1]
            leakage[spec.name] = best_of(bests, higher_is_better=higher)[1]
    return leakage


def _size_mb(module) -> float:
    return 4 * count_parameters(module) / 1e6


def _point(
    run_dir: Path, config: Config, sweep: Sweep, value: Any, **options: Any
) -> dict[str, Any]:
    out = run_dir / "audit" / "sweeps" / f"{sweep.key}_{_value_label(value)}"
    point = point_config(config, sweep.key, value, options["device"])
    record = _train_point(point, out, options["data_root"], options["progress"])
    producer, heads = load_producer(out), load_heads(out)
    kinds = {spec.name: spec.kind for spec in point.all_labels}
    return {
        "value": None if sweep.preset and math.isinf(value) else value,
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
        _HEADERS.get(sweep, sweep),
        "measured ε",
        "feature shape",
        "producer MB",
        "consumer MB",
    ]
    header += [f"{t} (utility)" for t in tasks] + [f"{a} (leakage)" for a in leaks]
    rows = []
    for p in points:
        value = "∞" if p["value"] is None else _value_text(p["value"])
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
    values = [p["value"] for p in points]
    numeric = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None
    )
    finite = [v for v in values if v is not None]
    infinity = (max(finite) * 2.0) if numeric and finite else 1.0
    xs = [infinity if v is None else v for v in values] if numeric else list(range(len(values)))
    for name in points[0]["utility"]:
        axes.plot(xs, [p["utility"][name] for p in points], "o-", label=f"{name} (utility)")
    for name in points[0]["leakage"]:
        axes.plot(xs, [p["leakage"][name] for p in points], "s--", label=f"{name} (leakage)")
    labels = ["∞" if v is None else _value_text(v) for v in values]
    if sweep == "epsilon":
        axes.set_xscale("log")
        axes.minorticks_off()
    axes.set_xticks(xs, labels)
    axes.set_xlabel({"epsilon": "target ε", "split": "split index"}.get(sweep, sweep))
    axes.set_ylabel("test metric")
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=110)


_DESCRIPTIONS = {
    "epsilon": "Utility and leakage vs the target ε of the producer's DP training (paper "
    "Fig. 7); ∞ trains without DP noise. Each point retrains the run's config.",
    "split": "Utility, leakage and sizes vs the split index (paper Table 12). Each point "
    "retrains the run's config with that split.",
}


def _description(key: str) -> str:
    return _DESCRIPTIONS.get(
        key, f"Utility and leakage vs `{key}`. Each point retrains the run's config with it."
    )


def check_sweeps(names: Sequence[str], values: Mapping[str, Sequence[float]]) -> list[Sweep]:
    """The sweeps asked for; unknown sweeps, values for sweeps not asked for, and preset
    values no point can take are refused before any expensive work starts."""
    for name in values:
        if name not in SWEEPS:
            raise ConfigError(f"sweep {name!r} is unknown: expected one of {list(SWEEPS)}")
        if name not in names:
            raise ConfigError(f"values given for sweep {name!r}, which is not asked for")
        if not values[name]:
            raise ConfigError(f"sweep {name!r} has no values")
    sweeps = [parse_sweep(item, values) for item in names]
    keys = [sweep.key for sweep in sweeps]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"sweep {repeated[0]!r} is asked for twice")
    for sweep in sweeps:
        for value in sweep.values if sweep.preset else ():
            _check_value(sweep.key, value)
    return sweeps


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
) -> list[Sweep]:
    """Build every point's config, network and training method, so a value the config,
    the encoder or the method refuses fails now, not after the points before it trained."""
    sweeps = check_sweeps(names, values)
    for sweep in sweeps:
        for value in sweep.values:
            try:
                point = point_config(config, sweep.key, value, "cpu")
                if sweep.key != "epsilon":
                    build_network(point)
                resolve_method(point)
            except ConfigError as exc:
                text = _value_text(value)
                raise ConfigError(f"sweep {sweep.key!r} value {text}: {exc}") from exc
    return sweeps


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
    sections = {}
    for sweep in check_points(config, names, values):
        options = {
            "data_root": data_root,
            "budget": budget,
            "device": device,
            "seed": seed,
            "progress": progress,
        }
        points = [_point(run_dir, config, sweep, v, **options) for v in sweep.values]
        figure = f"sweep_{sweep.key}.png"
        _plot(sweep.key, points, out_dir / figure)
        sections[sweep.key] = {
            "description": _description(sweep.key),
            **sweep_table(sweep.key, points, config),
            "figure": figure,
            "caption": f"Utility and leakage across the {sweep.key} sweep",
            "points": points,
        }
    return sections
