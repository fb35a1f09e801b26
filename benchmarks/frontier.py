"""The privacy–utility frontier: every defence swept over its knob, trained, audited, plotted.

    python benchmarks/frontier.py DATASET [--budget quick|full] [--device cpu|cuda|auto]
                                  [--only METHOD ...] [--point ID ...] [--data-root DIR]
    python benchmarks/frontier.py celeba --budget quick            # every point (2 CPU cores)
    python benchmarks/frontier.py demo --only censor nopeek        # two methods' points
    python benchmarks/frontier.py celeba --point censor_weight_10 --seeds 3   # mean ± sd
    python benchmarks/frontier.py celeba --render-only             # figures from frontier.json
    python benchmarks/frontier.py celeba --list                    # the points, no training

Datasets (``DATASETS``): ``celeba`` (smile public, gender private), ``statefarm``
(behaviour public, driver private), both on the paper-table configs with their quick
reduction (``paper_tables.QUICK_DATA`` / ``QUICK_TRAIN``) at ``--budget quick``; and
``demo``, the generated scenes of ``metamorphosis demo`` (colour and count public, colour on
the utility axis; background private), whose config is already sized for a CPU.

Points (``POINTS``, the one table to extend): per method a knob over at least four values,
each a set of dotted config overrides applied as ``--set`` applies them. Each point trains
into ``runs/frontier/<dataset>/<budget>/<point id>/`` (a finished run dir with the same
config is reused; one with another config is set aside as ``<id>.staleN``), is audited at
the matching attack budget (``quick``: the paper tables' CPU budget; ``full``: the audit's
full budget), and is recorded the moment it finishes in
``results/frontier/<dataset>/frontier.json``: utility (the public task's primary test
metric), the best attacker's recovery of the private attribute from the public task's
released features (and which attacker), the majority rate, the label floor, the best
attacker on the encoder output (universal), reconstruction PSNR from the public features
(and the mean-image guess), ε and training seconds. A point already recorded with the
same overrides and budget is skipped, so the frontier grows over several sessions.

Each run also writes ``frontier_leakage.png`` (utility against best-attacker leakage),
``frontier_psnr.png`` (utility against reconstruction PSNR), each with its Pareto front
(:func:`pareto_front`: most utility for the least leakage / PSNR), and ``frontier.md`` (every
point, whether it is on a front, and the command that made it). ``--render-only`` redraws
them from frontier.json alone. ``--point ID --seeds N`` reruns a point with ``train.seed``
0 … N−1 and records the mean ± sd under that point's ``seeds`` entry.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import yaml

if TYPE_CHECKING:
    from metamorphosis.audit.budget import AttackBudget
    from metamorphosis.config import Config

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # paper_tables (and its paper_numbers) sit beside this file
    sys.path.insert(0, str(HERE))

import paper_tables  # noqa: E402

ROOT = paper_tables.ROOT
RESULTS = ROOT / "results" / "frontier"
RUNS = ROOT / "runs" / "frontier"
FRONTIER_JSON = "frontier.json"

# --- the points ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One configuration on the frontier: ``method`` with its ``knob`` at ``value``.

    ``overrides`` maps dotted config keys to values (``{"censor.weight": 10}``), applied
    after the dataset's config and budget as ``--set`` would. ``name`` replaces the
    generated id (``<method>_<knob>_<value>``); ``reference`` marks a point that is no
    sweep (it needs no four values).
    """

    method: str
    knob: str
    value: float | str
    overrides: dict[str, Any] = field(hash=False)
    name: str | None = None
    reference: bool = False

    @property
    def id(self) -> str:
        return self.name or f"{self.method}_{self.knob}_{_value_text(self.value)}"

    @property
    def label(self) -> str:
        return f"{self.method} {self.knob}={_value_text(self.value)}"


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def sweep(
    method: str, knob: str, key: str, values: Iterable[float], fixed: Mapping[str, Any]
) -> list[Point]:
    """``method``'s points: the ``fixed`` overrides, and ``key`` at each of ``values``."""
    return [Point(method, knob, value, {**fixed, key: value}) for value in values]


PAPER = "metamorphosis"  # the paper-faithful points, highlighted in the figures
UNIVERSAL = "universal"  # the yardstick every defence is set against, highlighted too
UNIVERSAL_NO_DP = {"method": "universal", "privacy.mode": "none"}
#: The paper's method: DP encoder, then modules with the SSIM term, at the dataset's
#: reference ε (its config's privacy.target_epsilon: 4 for CelebA and StateFarm, 8 for
#: the demo); the censor, bottleneck and erase points build on it.
PAPER_BASE = {"method": PAPER, "privacy.mode": "both"}
BOTTLENECK_BASE = {**PAPER_BASE, "defence.bottleneck_channels": 8}
#: The narrow noisy release: one 16-value code per image through a Gaussian channel
#: (values in (−1, 1), noise σ: at most 8·ln(1 + 1/σ²) nats per release), censored
#: against restarted adversaries; no DP, 10 epochs (the code learns slower than a map).
NARROW_BASE = {
    "method": "censor", "privacy.mode": "none", "train.epochs": 10,
    "censor.weight": 10, "censor.adversary_lr": 0.01, "censor.reset_every": 150,
    "defence.bottleneck_channels": 16, "defence.code_size": 1, "defence.channel": "gaussian",
}  # fmt: skip
#: The narrow variational code: one 16-value code per image whose spread the bottleneck
#: learns (β weighs its KL), censored against restarted adversaries; no DP, 10 epochs.
VIB_BASE = {**NARROW_BASE, "defence.channel": "vib"}

#: Every point, in the order they train (references first: the cheapest, and the yardstick).
# fmt: off
POINTS: tuple[Point, ...] = (
    # references: the encoder output released as it is, without and with DP-SGD
    Point(UNIVERSAL, "dp", "none", dict(UNIVERSAL_NO_DP), name=UNIVERSAL, reference=True),
    Point("universal-dp", "epsilon", 4,
          {"method": "universal", "privacy.mode": "input", "privacy.target_epsilon": 4.0},
          reference=True),
    # the same references trained as long as the narrow codes (10 epochs, not the quick 4):
    # a code point is set against the better of the two
    Point("universal-10", "epochs", 10, {**UNIVERSAL_NO_DP, "train.epochs": 10},
          reference=True),
    Point("universal-dp-10", "epsilon", 4,
          {"method": "universal", "privacy.mode": "input", "privacy.target_epsilon": 4.0,
           "train.epochs": 10},
          reference=True),
    # sweep(method, knob, swept config key, values, fixed overrides)
    *sweep(PAPER, "omega", "privacy.omega", (1e-4, 1e-3, 1e-2, 1e-1), PAPER_BASE),
    *sweep("deepobfuscator", "attribute_weight", "deepobfuscator.attribute_weight",
           (0.01, 0.1, 1, 10), {"method": "deepobfuscator", "privacy.mode": "none"}),
    *sweep("censor", "weight", "censor.weight", (0.1, 1, 10, 100),
           {"method": "censor", "privacy.mode": "both"}),
    *sweep("bottleneck", "beta", "defence.beta", (1e-4, 1e-3, 1e-2, 1e-1), BOTTLENECK_BASE),
    # Shredder-style: Gaussian noise on the universal features, nothing else
    *sweep("noise", "sigma", "defence.noise", (0.25, 0.5, 1, 2), UNIVERSAL_NO_DP),
    # NoPeek's distance correlation is a batch statistic: no DP-SGD, so mode task
    *sweep("nopeek", "weight", "nopeek.weight", (0.1, 0.5, 1, 5),
           {"method": "nopeek", "privacy.mode": "task"}),
    *sweep("erase", "beta", "defence.beta", (1e-4, 1e-3, 1e-2, 1e-1),
           {**BOTTLENECK_BASE, "defence.erase": "linear"}),
    *sweep("narrow", "sigma", "defence.noise", (0.1, 0.25, 0.5, 1), NARROW_BASE),
    *sweep("vib", "beta", "defence.beta", (1e-3, 1e-2, 1e-1, 1), VIB_BASE),
    # what censoring adds to that code: λ = 0 is the code alone (the adversaries train,
    # but send the producer nothing; private heads never teach the producer in mode none)
    *sweep("vib-censor", "weight", "censor.weight", (0, 1, 10, 100),
           {**VIB_BASE, "defence.beta": 0.01}),
    # the code alone (λ = 0), its β swept
    *sweep("vib-code", "beta", "defence.beta", (0.03, 0.1, 0.3, 1),
           {**VIB_BASE, "censor.weight": 0}),
    # the code alone (λ = 0, β = 0.01), its side swept: 1 × 1 is one vector per image
    *sweep("vib-size", "code_size", "defence.code_size", (1, 2, 4, 8),
           {**VIB_BASE, "censor.weight": 0, "defence.beta": 0.01}),
    # the code alone under DP-SGD (mode input: encoder, modules and code all DP), set
    # against universal-dp_epsilon_4 at ε = 4
    *sweep("vib-dp", "epsilon", "privacy.target_epsilon", (1, 2, 4, 8),
           {**VIB_BASE, "defence.beta": 0.01, "censor.weight": 0, "privacy.mode": "input"}),
)
# fmt: on

#: Legend labels; a method missing here is shown by its name.
METHOD_LABELS = {
    UNIVERSAL: "universal (no DP)",
    "universal-dp": "universal, DP-SGD ε = 4 (mode input)",
    "universal-10": "universal (no DP), 10 epochs",
    "universal-dp-10": "universal, DP-SGD ε = 4 (mode input), 10 epochs",
    PAPER: "MetaMorphosis (paper: mode both)",
    "deepobfuscator": "DeepObfuscator (mode none)",
    "censor": "censor + MetaMorphosis",
    "bottleneck": "bottleneck (8 ch.) + MetaMorphosis",
    "noise": "release noise on universal (Shredder-style)",
    "nopeek": "NoPeek (mode task)",
    "erase": "bottleneck + linear erasure",
    "narrow": "narrow noisy code + censor (no DP)",
    "vib": "narrow variational code + censor (no DP)",
    "vib-censor": "narrow variational code, β = 0.01, censor λ swept (no DP)",
    "vib-dp": "narrow variational code, DP-SGD, ε swept (mode input)",
    "vib-code": "narrow variational code alone, β swept (λ = 0, no DP)",
    "vib-size": "variational code alone, its side swept (16 channels, λ = 0, no DP)",
}
#: Colour and marker per method; others cycle through the rest of tab10.
METHOD_STYLES = {
    UNIVERSAL: ("black", "*"),
    "universal-dp": ("0.5", "*"),
    "universal-10": ("black", "x"),
    "universal-dp-10": ("0.5", "x"),
    PAPER: ("tab:blue", "o"),
    "deepobfuscator": ("tab:orange", "s"),
    "censor": ("tab:green", "^"),
    "bottleneck": ("tab:purple", "D"),
    "noise": ("tab:brown", "v"),
    "nopeek": ("tab:pink", "P"),
    "erase": ("tab:olive", "X"),
    "narrow": ("tab:red", "h"),
    "vib": ("tab:cyan", "p"),
    "vib-censor": ("tab:gray", "8"),
    "vib-dp": ("0.3", "H"),
    "vib-code": ("darkred", "d"),
    "vib-size": ("darkgreen", "<"),
}

# --- the datasets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A frontier's data: its config, the public task on the utility axis, the private
    attribute whose leakage is measured, its folder under ``--data-root`` (None: generated),
    the overrides of the quick budget (``full``: the config as it is) and ``base``, the
    overrides of every budget, applied first."""

    name: str
    config: Path
    public: str
    private: str
    folder: str | None
    quick: tuple[str, ...] = ()
    base: tuple[str, ...] = ()


def _tables_quick(name: str) -> tuple[str, ...]:
    """The paper tables' quick reduction of ``name`` (32×32, half-width ResNet-18, 4,000 images)."""
    return (*paper_tables.QUICK_DATA[name], *paper_tables.QUICK_TRAIN)


def _demo_config() -> Path:
    import metamorphosis

    return Path(metamorphosis.__file__).with_name("demo.yaml")  # `metamorphosis demo`'s config


DEMO_UNDEFENDED = ("defence.preset=null", "privacy.mode=both", "train.epochs=5")

DATASETS = {
    # the paper tables' CelebA config with smile as the one public task, gender private
    "celeba": Dataset(
        "celeba", ROOT / paper_tables.CELEBA2, "smile", "gender", "celeba", _tables_quick("celeba")
    ),
    "statefarm": Dataset(
        "statefarm",
        ROOT / paper_tables.STATEFARM,
        "behaviour",
        "driver",
        "statefarm",
        _tables_quick("statefarm"),
    ),
    # `metamorphosis demo` releases through the recommended preset; its points start from
    # the undefended paper demo (DP encoder + task privacy, 5 epochs) that preset replaced
    "demo": Dataset("demo", _demo_config(), "colour", "background", None, base=DEMO_UNDEFENDED),
}

# --- configs ------------------------------------------------------------------------------


def override_strings(overrides: Mapping[str, Any]) -> list[str]:
    """``key=value`` items for :func:`metamorphosis.config.apply_overrides` (``--set``).

    Values are written as YAML: ``str(1e-05)`` is ``1e-05``, which YAML reads as a string.
    """
    items = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
        items.append(f"{key}={text.removesuffix('...').strip()}")
    return items


def point_overrides(
    point: Point, dataset: Dataset, budget: str, device: str, seed: int | None = None
) -> list[str]:
    """The dataset's base and budget overrides, then the point's, the device and the seed."""
    quick = dataset.quick if budget == "quick" else ()
    items = [*dataset.base, *quick, *override_strings(point.overrides)]
    items.append(f"train.device={device}")
    return items if seed is None else [*items, f"train.seed={seed}"]


def point_config(
    point: Point, dataset: Dataset, budget: str, device: str = "cpu", seed: int | None = None
) -> Config:
    """The validated :class:`~metamorphosis.config.Config` a point trains."""
    from metamorphosis.config import load_config

    return load_config(dataset.config, point_overrides(point, dataset, budget, device, seed))


# --- training and auditing (``train`` / ``audit`` are the seams the tests replace) ---------


_log = paper_tables._log  # timestamped lines on stderr, as the paper tables log


def train(config: Config, run_dir: Path, data_root: Path | None, progress: bool) -> None:
    """Train ``config`` into ``run_dir`` (``metamorphosis train``'s code)."""
    from metamorphosis.experiment import train_run

    train_run(config, run_dir, data_root=data_root, progress=progress)


def audit(
    run_dir: Path, data_root: Path | None, budget: AttackBudget, device: str, progress: bool
) -> None:
    """Audit ``run_dir`` at the attack budget ``budget`` (seed 0: only training seeds vary)."""
    from metamorphosis.audit.run import run_audit

    run_audit(run_dir, data_root=data_root, budget=budget, device=device, seed=0, progress=progress)


def attack_budget(budget: str) -> AttackBudget:
    """The paper tables' attackers for ``quick``, the audit's full budget for ``full``."""
    from metamorphosis.audit.budget import BUDGETS

    return BUDGETS["full"] if budget == "full" else paper_tables.quick_attack_budget()


def _set_aside(run_dir: Path) -> Path:
    """Rename a run dir trained from another config (never delete a finished run)."""
    for n in itertools.count(1):
        aside = run_dir.with_name(f"{run_dir.name}.stale{n}")
        if not aside.exists():
            run_dir.rename(aside)
            return aside
    raise AssertionError("unreachable")


def ensure_trained(
    config: Config,
    run_dir: Path,
    *,
    data_root: Path | None,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """``run_dir`` trained from ``config``: reused when it was, trained when absent, and
    set aside first when it was trained from another config."""
    if (run_dir / "run.json").exists() and not paper_tables._same_config(run_dir, config):
        log(f"{run_dir} was trained from another config: set aside as {_set_aside(run_dir)}")
    if (run_dir / "run.json").exists():
        log(f"reusing the trained run {run_dir}")
    else:
        log("training ...")
        train(config, run_dir, data_root, progress)


def run_point(
    config: Config,
    run_dir: Path,
    *,
    data_root: Path | None,
    budget: str,
    device: str,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """``run_dir`` trained from ``config`` and audited at ``budget``, doing what is missing."""
    ensure_trained(config, run_dir, data_root=data_root, progress=progress, log=log)
    attack = attack_budget(budget)
    report = run_dir / "audit" / "report.json"
    if report.exists() and json.loads(report.read_text())["budget"]["name"] == attack.name:
        return
    log(f"auditing ({attack.name} attack budget) ...")
    audit(run_dir, data_root, attack, device, progress)


# --- what a point measured ----------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _leakage_entry(report: Mapping[str, Any], source: str, label: str, where: Path):
    for entry in report.get("leakage") or []:
        if (entry["source"], entry["label"]) == (source, label):
            return entry
    raise SystemExit(
        f"{where}: no leakage entry for {label!r} from {source!r} features; re-audit the run"
    )


def measure(run_dir: Path, dataset: Dataset) -> dict[str, Any]:
    """The frontier's numbers for one run, from ``run.json`` and ``audit/report.json``.

    Report keys read: ``leakage[]`` (``source``, ``label``, ``metric``, ``best: {attacker,
    value}``, ``attackers``, ``majority``, ``label_floor``, ``universal``),
    ``reconstruction.scores[source].psnr`` and ``reconstruction.baseline.psnr``,
    ``budget.name`` and ``data.test_items``.
    """
    from metamorphosis.audit.features import ENCODER_SOURCE
    from metamorphosis.metrics import primary_metric

    record = _read(run_dir / "run.json")
    report_path = run_dir / "audit" / "report.json"
    report = _read(report_path)
    kinds = {spec["name"]: spec["kind"] for spec in record["config"]["tasks"]}
    metric, higher = primary_metric(kinds[dataset.public])
    entry = _leakage_entry(report, dataset.public, dataset.private, report_path)
    recon = report.get("reconstruction") or {}
    scores = recon.get("scores") or {}
    return {
        "utility": (record["metrics"].get(dataset.public) or {}).get(metric),
        "utility_metric": metric,
        "utility_higher_is_better": higher,
        "leakage": entry["best"]["value"],
        "leakage_attacker": entry["best"]["attacker"],
        "leakage_metric": entry["metric"],
        "attackers": entry.get("attackers") or {},
        "majority": entry.get("majority"),
        "label_floor": entry.get("label_floor"),
        "universal": entry.get("universal"),
        "psnr": (scores.get(dataset.public) or {}).get("psnr"),
        "psnr_universal": (scores.get(ENCODER_SOURCE) or {}).get("psnr"),
        "psnr_baseline": (recon.get("baseline") or {}).get("psnr"),
        "epsilon": record["privacy"]["epsilon"],
        "train_seconds": record.get("train_seconds"),
        "audit_budget": report["budget"]["name"],
        "test_items": report["data"]["test_items"],
        "tasks": _every_task(record, report, dataset, report_path),
    }


def _every_task(
    record: Mapping[str, Any], report: Mapping[str, Any], dataset: Dataset, where: Path
) -> dict[str, dict[str, Any]]:
    """Each public task's utility and the best attacker's leakage of the private attribute
    from its features (a promise holds only when it holds for every task's release)."""
    from metamorphosis.metrics import primary_metric

    result = {}
    for spec in record["config"]["tasks"]:
        metric, _ = primary_metric(spec["kind"])
        entry = _leakage_entry(report, spec["name"], dataset.private, where)
        result[spec["name"]] = {
            "utility": (record["metrics"].get(spec["name"]) or {}).get(metric),
            "leakage": entry["best"]["value"],
            "leakage_attacker": entry["best"]["attacker"],
        }
    return result


# --- frontier.json ------------------------------------------------------------------------


def frontier_path(results: Path, dataset: Dataset) -> Path:
    return results / dataset.name / FRONTIER_JSON


def load_frontier(path: Path, dataset: Dataset) -> dict[str, Any]:
    """The recorded frontier (a fresh one when the file is absent)."""
    if not path.exists():
        return {"dataset": dataset.name, "public": dataset.public, "private": dataset.private}
    frontier = _read(path)
    if frontier.get("dataset") != dataset.name:
        raise SystemExit(f"{path} holds dataset {frontier.get('dataset')!r}, not {dataset.name!r}")
    return frontier


def save_frontier(path: Path, frontier: Mapping[str, Any]) -> None:
    """Atomically: a session killed mid-write leaves the previous file whole."""
    from metamorphosis.io import json_safe, write_json

    write_json(path, json_safe(frontier))


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists), for comparisons."""
    return json.loads(json.dumps(value))


def is_recorded(frontier: Mapping[str, Any], point: Point, budget: str) -> bool:
    """Whether ``point`` is in ``frontier`` with the same overrides and budget."""
    record = (frontier.get("points") or {}).get(point.id)
    return (
        record is not None
        and record.get("budget") == budget
        and record.get("overrides") == _plain(point.overrides)
    )


def command(dataset: Dataset, budget: str, device: str, *extra: str) -> str:
    return shlex.join(
        ["python", "benchmarks/frontier.py", dataset.name, "--budget", budget, *extra]
        + (["--device", device] if device != "cpu" else [])
    )


def point_record(
    point: Point, budget: str, device: str, command_line: str, run_dir: Path, numbers: dict
) -> dict[str, Any]:
    return {
        "method": point.method,
        "method_label": METHOD_LABELS.get(point.method, point.method),
        "knob": point.knob,
        "value": point.value,
        "reference": point.reference,
        "overrides": _plain(point.overrides),
        "budget": budget,
        "device": device,
        "run_dir": _shown(run_dir),
        "command": command_line,
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S"),
        **numbers,
    }


def _shown(path: Path) -> str:
    """``path`` relative to the repo when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Session:
    """Where and how this invocation trains and records."""

    dataset: Dataset
    budget: str
    device: str
    data_root: Path | None
    results: Path
    runs: Path
    progress: bool

    def run_dir(self, point: Point, seed: int | None = None) -> Path:
        name = point.id if seed is None else f"{point.id}_seed{seed}"
        return self.runs / self.dataset.name / self.budget / name

    def run(self, point: Point, prefix: str, seed: int | None = None) -> dict[str, Any]:
        """Train and audit what is missing; the run's numbers."""
        run_dir = self.run_dir(point, seed)
        run_point(
            point_config(point, self.dataset, self.budget, self.device, seed),
            run_dir,
            data_root=self.data_root,
            budget=self.budget,
            device=self.device,
            progress=self.progress,
            log=lambda line: _log(f"{prefix}: {line}"),
        )
        return measure(run_dir, self.dataset)


def grow(session: Session, points: Sequence[Point]) -> dict[str, Any]:
    """Train, audit and record each point not yet recorded; figures after each one."""
    path = frontier_path(session.results, session.dataset)
    frontier = load_frontier(path, session.dataset)
    for i, point in enumerate(points, 1):
        prefix = f"[{i}/{len(points)}] {point.label}"
        if is_recorded(frontier, point, session.budget):
            _log(f"{prefix}: recorded already (budget {session.budget}), skipped")
            continue
        numbers = session.run(point, prefix)
        line = command(session.dataset, session.budget, session.device, "--point", point.id)
        record = point_record(
            point, session.budget, session.device, line, session.run_dir(point), numbers
        )
        frontier.setdefault("points", {})[point.id] = record
        save_frontier(path, frontier)
        render(path)
        _log(f"{prefix}: recorded ({_summary(record)})")
    return frontier


def _summary(record: Mapping[str, Any]) -> str:
    pct = paper_tables._pct
    return (
        f"utility {pct(record['utility'])} %, leakage {pct(record['leakage'])} % "
        f"({record['leakage_attacker']}), PSNR {paper_tables._num(record['psnr'], 1)} dB"
    )


# --- seeds --------------------------------------------------------------------------------

#: What ``--seeds`` averages.
SEED_FIELDS = ("utility", "leakage", "universal", "psnr", "epsilon", "train_seconds")


def seed_summary(runs: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean and sample sd (None below two values) of each of ``SEED_FIELDS`` over ``seeds``."""
    mean: dict[str, float | None] = {}
    sd: dict[str, float | None] = {}
    for name in SEED_FIELDS:
        values = [runs[str(s)][name] for s in seeds if runs[str(s)].get(name) is not None]
        mean[name] = statistics.fmean(values) if values else None
        sd[name] = statistics.stdev(values) if len(values) > 1 else None
    return {"seeds": list(seeds), "mean": mean, "sd": sd}


def grow_seeds(session: Session, point: Point, n: int) -> dict[str, Any]:
    """``point`` with ``train.seed`` 0 … n−1, under its record's ``seeds`` entry.

    The seed the point's config already has is the recorded point itself; each other seed
    trains into ``<id>_seed<k>``. Seeds already in the entry are not rerun.
    """
    path = frontier_path(session.results, session.dataset)
    frontier = grow(session, [point])  # the point itself first (skipped when recorded)
    record = frontier["points"][point.id]
    base_seed = point_config(point, session.dataset, session.budget).train.seed
    entry = record.setdefault("seeds", {"runs": {}})
    for k in range(n):
        prefix = f"[seed {k + 1}/{n}] {point.label} train.seed={k}"
        if str(k) in entry["runs"]:
            _log(f"{prefix}: recorded already, skipped")
            continue
        numbers = record if k == base_seed else session.run(point, prefix, seed=k)
        entry["runs"][str(k)] = {name: numbers.get(name) for name in SEED_FIELDS}
        entry.update(seed_summary(entry["runs"], [s for s in range(n) if str(s) in entry["runs"]]))
        save_frontier(path, frontier)
        _log(f"{prefix}: recorded")
    render(path)
    return frontier


# --- the Pareto front ---------------------------------------------------------------------


def _finite(value: Any) -> TypeGuard[float]:
    """A finite number (bool is none): None and NaN mean "not measured" here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(points: Mapping[str, tuple[float | None, float | None]]) -> list[str]:
    """The ids of the points that no other point dominates.

    Each point is ``(cost, gain)``: leakage or PSNR (lower is better) and utility (higher is
    better). ``q`` dominates ``p`` when ``q``'s cost is ≤ ``p``'s and its gain ≥ ``p``'s,
    one of them strictly. Points equal in both do not dominate each other: both are on the
    front. A point with a missing or non-finite coordinate is on no front (it was not
    measured) and dominates nothing. Sorted by cost, then by gain (highest first), then id.
    """
    known = {
        key: (cost, gain) for key, (cost, gain) in points.items() if _finite(cost) and _finite(gain)
    }

    def dominated(p: tuple[float, float]) -> bool:
        return any(
            q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in known.values()
        )

    front = [key for key, p in known.items() if not dominated(p)]
    return sorted(front, key=lambda key: (known[key][0], -known[key][1], key))


def _coordinates(points: Mapping[str, Mapping[str, Any]], cost: str) -> dict[str, tuple]:
    """(cost, gain) per point; utility negated where lower is better, so gain is "higher"."""

    def gain(p: Mapping[str, Any]) -> Any:
        value = p.get("utility")
        return -value if _finite(value) and p.get("utility_higher_is_better") is False else value

    return {key: (p.get(cost), gain(p)) for key, p in points.items()}


# --- figures and frontier.md --------------------------------------------------------------


def _styles(points: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """Colour and marker per method, in the order the methods first appear."""
    spare = itertools.cycle([f"C{i}" for i in range(10)])
    styles = {}
    for p in points.values():
        method = p["method"]
        if method not in styles:
            styles[method] = METHOD_STYLES.get(method) or (next(spare), "o")
    return styles


def _median(points: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """One reference line per figure: the runs share their test split, so these agree."""
    values = [p[key] for p in points.values() if _finite(p.get(key))]
    return statistics.median(values) if values else None


def _plot_method(ax: Any, method: str, mine: list[Mapping[str, Any]], cost: str, style) -> None:
    colour, marker = style
    xs, ys = [p[cost] for p in mine], [p["utility"] for p in mine]
    highlight = method in (PAPER, UNIVERSAL)  # the paper's points and the yardstick stand out
    ax.scatter(
        xs,
        ys,
        c=colour,
        marker=marker,
        s=(260 if highlight else 150) if marker == "*" else (90 if highlight else 45),
        # an unfilled marker ("x") has no edge to colour: matplotlib warns when given one
        edgecolors=("black" if highlight else "none") if marker not in "x+" else None,
        linewidths=1.4,
        label=mine[0].get("method_label", method),
        zorder=4 if highlight else 3,
    )
    for p, x, y in zip(mine, xs, ys, strict=True):
        if not p.get("reference"):  # a reference's legend entry says what it is
            text = _value_text(p["value"])
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        sd = ((p.get("seeds") or {}).get("sd") or {}).get("utility")
        if sd is not None:
            ax.errorbar(x, y, yerr=sd, color=colour, capsize=2, lw=0.8, zorder=2)


def plot_frontier(
    frontier: Mapping[str, Any], cost: str, path: Path, xlabel: str, lines: list[tuple]
) -> None:
    """Utility against ``cost`` per method, the Pareto front, and vertical reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier.get("points") or {}
    drawn = {k: p for k, p in points.items() if _finite(p.get(cost)) and _finite(p.get("utility"))}
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for method, style in _styles(drawn).items():
        _plot_method(ax, method, [p for p in drawn.values() if p["method"] == method], cost, style)
    front = pareto_front(_coordinates(drawn, cost))
    if front:
        xs, ys = [drawn[k][cost] for k in front], [drawn[k]["utility"] for k in front]
        # a staircase: the region the front's points dominate ends there
        ax.plot(xs, ys, "--", color="0.35", lw=1.2, drawstyle="steps-post", label="Pareto front")
    for value, label, colour, style in lines:
        if value is not None:
            ax.axvline(value, color=colour, ls=style, lw=1.1, label=label, zorder=0)
    budgets = ", ".join(sorted({str(p.get("budget")) for p in points.values()})) or "—"
    ax.set_title(
        f"{frontier['dataset']}: {frontier['public']} public, {frontier['private']} private "
        f"(budget {budgets})",
        fontsize=9,
    )
    metric = next((p.get("utility_metric") for p in drawn.values()), "utility")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(f"{frontier['public']} {metric} (test)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fronts(points: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str]]:
    return {cost: set(pareto_front(_coordinates(points, cost))) for cost in ("leakage", "psnr")}


def _seed_lines(points: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A table of the points rerun over seeds: mean ± sd."""
    seeded = {k: p["seeds"] for k, p in points.items() if (p.get("seeds") or {}).get("seeds")}
    if not seeded:
        return []

    def cell(entry: Mapping[str, Any], name: str, fmt: Callable[[float], str]) -> str:
        mean, sd = entry["mean"].get(name), entry["sd"].get(name)
        if mean is None:
            return "—"
        return fmt(mean) + ("" if sd is None else f" ± {fmt(sd)}")

    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    def db(v: float) -> str:
        return f"{v:.1f}"

    lines = ["", "Points rerun over seeds (`--seeds`; mean ± sample sd):", ""]
    lines += ["| point | seeds | utility (%) | leakage (%) | PSNR (dB) |", "|---|---|---|---|---|"]
    for key, entry in seeded.items():
        seeds = ", ".join(map(str, entry["seeds"]))
        cells = [cell(entry, "utility", pct), cell(entry, "leakage", pct), cell(entry, "psnr", db)]
        lines.append(f"| `{key}` | {seeds} | " + " | ".join(cells) + " |")
    return lines


def _table_lines(points: Mapping[str, Mapping[str, Any]]) -> list[str]:
    fronts = _fronts(points)
    pct, num = paper_tables._pct, paper_tables._num
    header = [
        "method",
        "knob",
        "utility (%)",
        "leakage (%) (best attacker)",
        "PSNR (dB)",
        "ε",
        "train (s)",
        "on front (leakage / PSNR)",
        "every public task: utility / leakage (%)",
        "budget",
        "command",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, p in points.items():
        on = " / ".join("**yes**" if key in fronts[c] else "no" for c in ("leakage", "psnr"))
        attacker = f" ({p['leakage_attacker']})" if p.get("leakage_attacker") else ""
        cells = [
            p.get("method_label", p["method"]),
            f"{p['knob']}={_value_text(p['value'])}",
            pct(p.get("utility")),
            pct(p.get("leakage")) + attacker,
            num(p.get("psnr"), 1),
            paper_tables._eps(p.get("epsilon")),
            num(p.get("train_seconds"), 0),
            on,
            _tasks_cell(p.get("tasks")),
            str(p.get("budget")),
            f"`{p.get('command', '—')}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _tasks_cell(tasks: Mapping[str, Mapping[str, Any]] | None) -> str:
    """``colour 87.8 / 58.6; count 69.4 / 68.9``: each task's utility and leakage."""
    if not tasks:
        return "—"
    pct = paper_tables._pct
    return "; ".join(f"{k} {pct(t['utility'])} / {pct(t['leakage'])}" for k, t in tasks.items())


def markdown(frontier: Mapping[str, Any]) -> str:
    """``frontier.md``: what the axes are, every point, and the figures."""
    points = frontier.get("points") or {}
    public, private = frontier["public"], frontier["private"]
    pct, num = paper_tables._pct, paper_tables._num
    budgets = sorted({str(p.get("budget")) for p in points.values()})
    lines = [
        f"### Privacy–utility frontier: {frontier['dataset']} ({public} public, {private} private)",
        "",
        f"`python benchmarks/frontier.py {frontier['dataset']} --budget {'|'.join(budgets)}` "
        f"({len(points)} points). Utility: {public}'s primary test metric. Leakage: the best of "
        f"the audit's attackers recovering {private} from the released {public} features "
        f"(the attacker named). PSNR: the audit's reconstruction of the input from the {public} "
        "features. A point is on a front when no other point has at least its utility with "
        "at most its leakage (or PSNR), one of them strictly.",
        "",
        f"References: majority rate {pct(_median(points, 'majority'))} %, label floor (what "
        f"{public}'s true labels reveal) {pct(_median(points, 'label_floor'))} %, mean-image "
        f"reconstruction guess {num(_median(points, 'psnr_baseline'), 1)} dB.",
        "",
        *_table_lines(points),
        *_seed_lines(points),
        "",
        "![utility against leakage](frontier_leakage.png)",
        "",
        "![utility against reconstruction PSNR](frontier_psnr.png)",
    ]
    return "\n".join(lines) + "\n"


def render(path: Path) -> Path:
    """``frontier_leakage.png``, ``frontier_psnr.png`` and ``frontier.md`` beside ``path``."""
    from metamorphosis.io import atomic_write

    frontier = _read(path)
    points = frontier.get("points") or {}
    out = path.parent
    private, public = frontier["private"], frontier["public"]
    leak_lines = [
        (_median(points, "majority"), "majority rate", "black", "-"),
        (_median(points, "label_floor"), f"label floor ({public} labels)", "tab:red", "--"),
    ]
    plot_frontier(
        frontier,
        "leakage",
        out / "frontier_leakage.png",
        f"best attacker's {private} recovery from {public} features (test)",
        leak_lines,
    )
    psnr_lines = [(_median(points, "psnr_baseline"), "mean-image guess", "black", "-")]
    plot_frontier(
        frontier,
        "psnr",
        out / "frontier_psnr.png",
        f"reconstruction PSNR from {public} features (dB)",
        psnr_lines,
    )
    text = markdown(frontier)
    atomic_write(out / "frontier.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out / "frontier.md"


# --- command line -------------------------------------------------------------------------


def check_data(dataset: Dataset, data_root: Path) -> Path | None:
    """The dataset's folder (None for generated data); a clear exit when it is missing."""
    if dataset.folder is None:
        return None
    folder = data_root / dataset.folder
    if not folder.is_dir():
        raise SystemExit(
            f"{dataset.name}: no data at {folder} (expected the {dataset.folder}/ folder under "
            f"{data_root}); pass --data-root DIR, the folder holding {dataset.folder}/"
        )
    return folder


def select(only: Sequence[str] | None, ids: Sequence[str] | None) -> list[Point]:
    """The points of the methods in ``only`` and those with the ids in ``ids`` (all when
    neither is given), in table order."""
    known = {p.id for p in POINTS}
    unknown = sorted(set(ids or ()) - known)
    if unknown:
        raise SystemExit(f"unknown point(s) {unknown}; known: {sorted(known)}")
    every = only is None and ids is None
    return [p for p in POINTS if every or p.method in (only or ()) or p.id in (ids or ())]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    methods = sorted({p.method for p in POINTS})
    parser.add_argument("--only", nargs="+", choices=methods, metavar="METHOD", help=str(methods))
    parser.add_argument("--point", action="append", metavar="ID", help="a point id (repeatable)")
    parser.add_argument("--seeds", type=int, help="with one --point: rerun it over seeds 0..N-1")
    parser.add_argument("--render-only", action="store_true", help="figures from frontier.json")
    parser.add_argument("--list", action="store_true", help="print the points and exit")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=paper_tables.DATA,
        help="folder holding celeba/ and statefarm/",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="(default results/frontier)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="(default runs/frontier)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    dataset = DATASETS[args.dataset]
    if args.render_only:
        path = frontier_path(args.results, dataset)
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `frontier.py {dataset.name}` first")
        _log(f"{dataset.name}: {render(path)}")
        return
    points = select(args.only, args.point)
    if args.list:
        for p in points:
            print(f"{p.id:<40} {' '.join(override_strings(p.overrides))}")
        return
    if args.seeds is not None and (args.seeds < 1 or len(points) != 1 or not args.point):
        parser.error("--seeds N (N >= 1) needs exactly one --point ID")
    session = Session(
        dataset,
        args.budget,
        args.device,
        check_data(dataset, args.data_root),
        args.results,
        args.runs,
        progress=not args.quiet,
    )
    if args.seeds is not None:
        grow_seeds(session, points[0], args.seeds)
    else:
        grow(session, points)
    _log(f"{dataset.name}: {frontier_path(args.results, dataset)}")


if __name__ == "__main__":
    main()
