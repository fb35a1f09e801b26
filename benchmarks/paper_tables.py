"""The paper's tables, reproduced in one harness: every method on the same data, splits and attacks.

    python benchmarks/paper_tables.py TABLE [TABLE ...] [--budget quick|full] [--device cpu|cuda]
    python benchmarks/paper_tables.py all --budget quick      # every table, 2 CPU cores
    python benchmarks/paper_tables.py --render                # tables from finished runs only

Tables (see ``TABLES``): ``table7`` (StateFarm, MetaMorphosis vs DeepObfuscator
vs universal), ``table8`` (CelebA smile / cheekbones / gender for three ω, with
DeepObfuscator and universal), ``table11`` (Cross-SEC vs SEC), ``table12``
(split 5 / 7 / 8), ``add_task`` (adding a task vs retraining vs
DeepObfuscator), ``dense_synthetic`` and ``dense_camvid`` (Tables 3–6
analogues: KD-MTL vs MetaMorphosis vs universal on dense tasks).

Each run trains from a ``configs/`` file with ``--set`` overrides through the
same code as ``metamorphosis train``, then ``metamorphosis audit`` runs on it.
Run dirs go to ``runs/paper_tables/<budget>/<run>/`` and are reused when their
config is unchanged (a table shares runs with another: ω = 0.001 in Table 8 is
Cross-SEC in Table 11 and split 5 in Table 12). Each table writes
``results/<table>/table.{md,json}`` and a figure; ``benchmarks/results_page.py``
puts them on ``docs/RESULTS.md``.

Budgets: ``quick`` (see ``QUICK_DATA``) shrinks images, encoder width, data
and epochs so that each table runs within an hour on 2 CPU cores; ``full``
trains the configs as they are and audits with the full attack budget (meant
for a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RUNS = ROOT / "runs" / "paper_tables"
DATA = ROOT.parent / "shared" / "data"

# --- budgets -------------------------------------------------------------------------------

#: Overrides that make a run fit the quick budget, per dataset (``full``: none). The
#: classification sets drop to 32×32 and ResNet-18 at half width (as the demo), which
#: is what lets DP training on 4,000 images plus the audit fit a few minutes a run.
QUICK_DATA = {
    "celeba": [
        "data.image_size=32",
        "model.encoder=resnet18-slim",
        "data.max_train=4000",
        "data.max_eval=500",
    ],
    "statefarm": [
        "data.image_size=32",
        "model.encoder=resnet18-slim",
        "data.max_train=4000",
        "data.max_eval=500",
    ],
    # Dense sets on ResNet-18 at half width, split 5, whose dense head decodes the split
    # features directly. SegNet's head pools on to 1×1 at these sizes before decoding (no
    # unpooling indices cross the split), and every method then predicted constants.
    "synthetic": [
        "data.image_size=32",
        "data.num_samples=800",
        "model.encoder=resnet18-slim",
        "model.split_index=5",
    ],
    "camvid": ["data.image_size=[48, 64]", "model.encoder=resnet18-slim", "model.split_index=5"],
}
QUICK_TRAIN = [
    "train.epochs=4",
    "train.encoder_epochs=3",
    "train.lr=2e-3",
    "kd_mtl.teacher_epochs=4",
]
QUICK_DENSE_TRAIN = ["train.epochs=15", "kd_mtl.teacher_epochs=15"]
QUICK_DESCRIPTION = (
    "32×32 faces / drivers on ResNet-18 at half width, ≤ 4,000 training images, 3 + 4 "
    "epochs; dense sets on the same encoder (split 5, upsampling head), 32×32 (generated) "
    "or 48×64 (CamVid), 15 epochs; attackers on 1,500 items × 5 epochs"
)


def quick_attack_budget():
    """The attackers of the quick tables (stated in every table)."""
    from metamorphosis.audit.budget import AttackBudget

    return AttackBudget(
        name="tables-cpu",
        train_items=1500,
        test_items=500,
        epochs=5,
        reconstruction_epochs=4,
        batch_size=64,
        lr=2e-3,
        tsne_items=100,
        decoder_width=32,
    )


# --- what to run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One trained and audited configuration."""

    name: str
    config: str
    dataset: str
    overrides: tuple[str, ...] = ()
    dense: bool = False
    added_task: dict[str, str] | None = None  # train `config`, then add-task this one
    added_omega: float | None = None  # add-task's --omega (None: the run's ω)
    base: str | None = None  # with added_task: the run it is added to (default <name>_base)

    def all_overrides(self, budget: str, device: str) -> list[str]:
        quick = []
        if budget == "quick":
            quick = QUICK_DATA[self.dataset] + (QUICK_DENSE_TRAIN if self.dense else QUICK_TRAIN)
        return [*quick, *self.overrides, f"train.device={device}"]


BASELINE = ("privacy.mode=none",)
CELEBA3 = "configs/celeba_smile_cheekbones_gender.yaml"
CELEBA2 = "configs/celeba_smile_gender.yaml"
STATEFARM = "configs/statefarm_behaviour_identity.yaml"
SYNTHETIC = "configs/synthetic_dense.yaml"
CAMVID = "configs/camvid_seg_boundary.yaml"


def _celeba(name: str, *overrides: str) -> Run:
    return Run(name, CELEBA3, "celeba", tuple(overrides))


def _deepobfuscator_weights(weight: float) -> tuple[str, ...]:
    """DeepObfuscator with ``weight`` on both adversarial terms (the default is 1)."""
    if weight == 1:
        return ("method=deepobfuscator", *BASELINE)
    return (
        "method=deepobfuscator",
        *BASELINE,
        f"deepobfuscator.reconstruction_weight={weight}",
        f"deepobfuscator.attribute_weight={weight}",
    )


#: The weights on DeepObfuscator's two adversarial terms that the tables compare (the
#: default 1, and 0.1 in case the default trades away all utility at a small budget).
DEEPOBFUSCATOR_WEIGHTS = (1, 0.1)


CELEBA_RUNS = {
    "omega_0.0001": _celeba("celeba3_omega_0.0001", "privacy.omega=0.0001"),
    "omega_0.001": _celeba("celeba3_omega_0.001", "privacy.omega=0.001"),
    "omega_0.01": _celeba("celeba3_omega_0.01", "privacy.omega=0.01"),
    "universal": _celeba("celeba3_universal", "method=universal", *BASELINE),
    **{
        f"deepobfuscator_{w}": _celeba(
            "celeba3_deepobfuscator" + ("" if w == 1 else f"_w{w}"), *_deepobfuscator_weights(w)
        )
        for w in DEEPOBFUSCATOR_WEIGHTS
    },
    "sec": _celeba("celeba3_sec", "privacy.omega=0.001", "model.module=sec"),
    "split_7": _celeba("celeba3_split_7", "privacy.omega=0.001", "model.split_index=7"),
    "split_8": _celeba("celeba3_split_8", "privacy.omega=0.001", "model.split_index=8"),
}


CHEEKBONES = {"name": "cheekbones", "column": "High_Cheekbones", "kind": "binary"}


def _dense(name: str, config: str, dataset: str, *overrides: str) -> Run:
    return Run(name, config, dataset, tuple(overrides), dense=True)


@dataclass(frozen=True)
class Table:
    """Rows (label → run) of one of the paper's tables and how to render them."""

    key: str
    title: str
    rows: dict[str, Run]
    render: str  # "privacy", "dense" or "add_task"
    public: tuple[str, ...] = ()
    private: tuple[str, ...] = ()
    paper: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""
    cost: bool = False  # show the feature shape and the producer's size (the split trade-off)


TABLES = {
    "table7": Table(
        "table7",
        "StateFarm: behaviour public, driver identity private (paper Table 7)",
        {
            "MetaMorphosis": Run("statefarm_metamorphosis", STATEFARM, "statefarm"),
            **{
                f"DeepObfuscator w={w}": Run(
                    "statefarm_deepobfuscator" + ("" if w == 1 else f"_w{w}"),
                    STATEFARM,
                    "statefarm",
                    _deepobfuscator_weights(w),
                )
                for w in DEEPOBFUSCATOR_WEIGHTS
            },
            "universal": Run(
                "statefarm_universal", STATEFARM, "statefarm", ("method=universal", *BASELINE)
            ),
        },
        "privacy",
        public=("behaviour",),
        private=("driver",),
        paper={"MetaMorphosis": {"behaviour": 0.9869, "behaviour→driver": 0.0149}},
    ),
    "table8": Table(
        "table8",
        "CelebA: smile and cheekbones public, gender private, across ω (paper Table 8, Fig. 9)",
        {
            "MetaMorphosis ω=0.0001": CELEBA_RUNS["omega_0.0001"],
            "MetaMorphosis ω=0.001": CELEBA_RUNS["omega_0.001"],
            "MetaMorphosis ω=0.01": CELEBA_RUNS["omega_0.01"],
            **{
                f"DeepObfuscator w={w}": CELEBA_RUNS[f"deepobfuscator_{w}"]
                for w in DEEPOBFUSCATOR_WEIGHTS
            },
            "universal": CELEBA_RUNS["universal"],
        },
        "privacy",
        public=("smile", "cheekbones"),
        private=("gender",),
        # the smile / gender numbers the project has from the paper (its two-task run, ε = 4)
        paper={
            "MetaMorphosis ω=0.001": {"smile": 0.8989, "smile→gender": 0.3456},
            # the paper does not give DeepObfuscator's weights; shown on the default row
            "DeepObfuscator w=1": {"smile→gender": 0.5585},
        },
    ),
    "table11": Table(
        "table11",
        "Cross-SEC against SEC (attention not swapped) on CelebA, ω = 0.001 (paper Table 11)",
        {"Cross-SEC": CELEBA_RUNS["omega_0.001"], "SEC": CELEBA_RUNS["sec"]},
        "privacy",
        public=("smile", "cheekbones"),
        private=("gender",),
    ),
    "table12": Table(
        "table12",
        "Split index 5 / 7 / 8 on CelebA, ω = 0.001 (paper Table 12)",
        {
            "split 5": CELEBA_RUNS["omega_0.001"],
            "split 7": CELEBA_RUNS["split_7"],
            "split 8": CELEBA_RUNS["split_8"],
        },
        "privacy",
        public=("smile", "cheekbones"),
        private=("gender",),
        cost=True,
    ),
    "add_task": Table(
        "add_task",
        "Adding a task: cheekbones added to a smile / gender producer (paper Table 1, scalability)",
        {
            "add-task (new module only)": Run(
                "celeba2_add_cheekbones", CELEBA2, "celeba", added_task=CHEEKBONES
            ),
            "add-task, ω = 0.1": Run(
                "celeba2_add_cheekbones_omega_0.1",
                CELEBA2,
                "celeba",
                added_task=CHEEKBONES,
                added_omega=0.1,
                base="celeba2_add_cheekbones_base",
            ),
            "retrain MetaMorphosis with 3 tasks": CELEBA_RUNS["omega_0.001"],
            "retrain DeepObfuscator with 3 tasks": CELEBA_RUNS["deepobfuscator_1"],
        },
        "add_task",
        public=("smile", "cheekbones"),
        private=("gender",),
    ),
    "dense_synthetic": Table(
        "dense_synthetic",
        "Generated scenes: segmentation, depth, normals (paper Tables 3–6 analogue, for NYU-v2)",
        {
            "MetaMorphosis": _dense("synthetic_metamorphosis", SYNTHETIC, "synthetic"),
            "KD-MTL": _dense("synthetic_kdmtl", SYNTHETIC, "synthetic", "method=kd-mtl", *BASELINE),
            "universal": _dense(
                "synthetic_universal", SYNTHETIC, "synthetic", "method=universal", *BASELINE
            ),
        },
        "dense",
        public=("seg", "depth", "normals"),
    ),
    "dense_camvid": Table(
        "dense_camvid",
        "CamVid: segmentation and boundaries (paper Tables 3–6 analogue, Cityscapes stand-in)",
        {
            "MetaMorphosis": _dense("camvid_metamorphosis", CAMVID, "camvid"),
            "KD-MTL": _dense("camvid_kdmtl", CAMVID, "camvid", "method=kd-mtl", *BASELINE),
            "universal": _dense(
                "camvid_universal", CAMVID, "camvid", "method=universal", *BASELINE
            ),
        },
        "dense",
        public=("seg", "boundary"),
    ),
}

# --- training and auditing --------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _resolved(run: Run, budget: str, device: str):
    from metamorphosis.config import load_config

    return load_config(ROOT / run.config, run.all_overrides(budget, device))


def _same_config(run_dir: Path, config) -> bool:
    """Whether ``run_dir`` was trained from ``config`` (up to the device and class counts)."""
    from metamorphosis.config import config_from_dict, same_config

    recorded = config_from_dict(json.loads((run_dir / "run.json").read_text())["config"])
    return same_config(config, recorded)


def train_and_audit(run: Run, budget: str, device: str, data: Path, progress: bool) -> Path:
    """The run's dir with its audit, training and auditing what is missing or stale."""
    from metamorphosis.audit.budget import BUDGETS
    from metamorphosis.audit.run import run_audit
    from metamorphosis.config import LabelSpec
    from metamorphosis.experiment import add_task, train_run

    run_dir = RUNS / budget / run.name
    config = _resolved(run, budget, device)
    data_root = data / run.dataset
    finished = (run_dir / "run.json").exists()
    if finished and run.added_task is None and not _same_config(run_dir, config):
        raise SystemExit(f"{run_dir} was trained from another config; remove it to retrain")
    if not finished:
        _log(f"training {run.name} ({' '.join(run.all_overrides(budget, device))})")
        if run.added_task is None:
            train_run(config, run_dir, data_root=data_root, progress=progress)
        else:
            base = RUNS / budget / (run.base or f"{run.name}_base")
            if not (base / "run.json").exists():
                train_run(config, base, data_root=data_root, progress=progress)
            add_task(
                base,
                LabelSpec(**run.added_task),
                omega=run.added_omega,
                out=run_dir,
                data_root=data_root,
                progress=progress,
            )
    attack = BUDGETS["full"] if budget == "full" else quick_attack_budget()
    report_path = run_dir / "audit" / "report.json"
    if (
        not report_path.exists()
        or json.loads(report_path.read_text())["budget"]["name"] != attack.name
    ):
        _log(f"auditing {run.name} ({attack.name} attack budget)")
        run_audit(
            run_dir, data_root=data_root, budget=attack, device=device, seed=0, progress=progress
        )
    return run_dir


# --- tables ---------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _eps(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _row_numbers(table: Table, run_dir: Path) -> dict[str, Any]:
    """The numbers a table shows for one run, read from run.json and audit/report.json."""
    record = json.loads((run_dir / "run.json").read_text())
    report = json.loads((run_dir / "audit" / "report.json").read_text())
    kept = report["swap"]["kept_heads"]["matrix"]
    retrained = report["swap"]["retrained"]["matrix"]
    details = report["swap"]["retrained"]["details"]
    numbers: dict[str, Any] = {
        "epsilon": record["privacy"]["epsilon"],
        "device": record["config"]["train"]["device"],
        "train_seconds": record.get("train_seconds"),
        "added_tasks": record.get("added_tasks", []),
        "producer_mb": (report.get("cost") or {}).get("producer", {}).get("size_mb"),
        "feature_shape": record["feature_shapes"][record["tasks"][0]],
        "utility": {t: record["metrics"][t] for t in table.public},
        "kept": {},
        "retrained": {},
        "retrained_details": {},
        "universal_retrained": {},
        "majority": report.get("majority", {}),
        "reconstruction": report["reconstruction"]["scores"],
        "reconstruction_baseline": report["reconstruction"]["baseline"],
        "ssim_between_tasks": report.get("similarity"),
        "audit_budget": report["budget"]["name"],
        "test_items": report["data"]["test_items"],
    }
    targets = [*table.public, *table.private]
    for source in table.public:
        for target in targets:
            if target == source:
                continue
            key = f"{source}→{target}"
            numbers["kept"][key] = kept.get(source, {}).get(target)
            numbers["retrained"][key] = retrained.get(source, {}).get(target)
            numbers["retrained_details"][key] = details.get(source, {}).get(target)
    numbers["universal_retrained"] = retrained.get("encoder", {})
    return numbers


def _paper(table: Table, label: str, key: str) -> str:
    value = table.paper.get(label, {}).get(key)
    return "" if value is None else f" ({_pct(value)})"


def _privacy_lines(table: Table, numbers: dict[str, dict[str, Any]]) -> list[str]:
    leaks = [f"{s}→{p}" for s in table.public for p in table.private]
    cross = [f"{s}→{t}" for s in table.public for t in table.public if s != t]
    header = ["run", "ε", *[f"{t} (%)" for t in table.public]]
    header += [f"{k} kept / **retrained** (%)" for k in leaks + cross]
    header += ["recon. PSNR from task features (dB)", "train (s)"]
    if table.cost:
        header += ["features", "producer (MB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        cells = [label, _eps(n["epsilon"])]
        for task in table.public:
            metric = next(iter(n["utility"][task]))
            cells.append(_pct(n["utility"][task][metric]) + _paper(table, label, task))
        for key in leaks + cross:
            kept = _pct(n["kept"][key]) + _paper(table, label, key)
            cells.append(f"{kept} / **{_pct(n['retrained'][key])}**")
        psnr = [n["reconstruction"][t]["psnr"] for t in table.public if t in n["reconstruction"]]
        cells.append(_num(max(psnr), 1) if psnr else "—")
        cells.append(_num(n["train_seconds"], 0))
        if table.cost:
            cells += ["×".join(map(str, n["feature_shape"])), _num(n["producer_mb"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    any_run = next(iter(numbers.values()))
    majority = ", ".join(f"{k} {_pct(v)}" for k, v in any_run["majority"].items())
    lines += [
        "",
        f"Paper numbers in parentheses where the project has them. Majority rates: {majority}. "
        "Mean-image reconstruction guess: "
        f"{_num(any_run['reconstruction_baseline']['psnr'], 1)} dB; "
        "universal features (encoder output) give "
        f"{_num(any_run['reconstruction'].get('encoder', {}).get('psnr'), 1)} dB.",
    ]
    return lines


def _dense_lines(table: Table, numbers: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(numbers.values()))
    metric_names = {t: list(first["utility"][t]) for t in table.public}
    header = ["run"] + [f"{t} {m}" for t in table.public for m in metric_names[t]]
    header += ["train (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        cells = [label]
        cells += [_num(n["utility"][t][m]) for t in table.public for m in metric_names[t]]
        cells.append(_num(n["train_seconds"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    keys = [f"{s}→{t}" for s in table.public for t in table.public if s != t]
    lines += ["", "Swap (primary metric of the target task): kept head / **retrained head**.", ""]
    header = ["run", *keys]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        cells = [label] + [f"{_num(n['kept'][k])} / **{_num(n['retrained'][k])}**" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _add_task_lines(table: Table, numbers: dict[str, dict[str, Any]]) -> list[str]:
    """Rows that added the task (time of the add-task step) against rows that retrained.

    The added task is the table's last public task; the first is one the run had.
    """
    new, old, private = table.public[-1], table.public[0], table.private[0]

    def seconds(n: dict[str, Any]) -> float:
        return n["added_tasks"][-1]["seconds"] if n["added_tasks"] else n["train_seconds"]

    header = [
        f"way to get {new} features",
        "training time (s)",
        "ε",
        f"{new} (%)",
        f"{new}→{private} kept / **retrained** (%)",
        f"{old}→{new} kept / **retrained** (%)",
        f"SSIM {new}–{private}",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        util = n["utility"][new]
        cells = [label, _num(seconds(n), 0), _eps(n["epsilon"]), _pct(util[next(iter(util))])]
        for key in (f"{new}→{private}", f"{old}→{new}"):
            cells.append(f"{_pct(n['kept'].get(key))} / **{_pct(n['retrained'].get(key))}**")
        similarity = (n["ssim_between_tasks"] or {}).get("ssim", {})
        cells.append(_num(similarity.get(f"{new}|{private}")))
        lines.append("| " + " | ".join(cells) + " |")
    first = next(n for n in numbers.values() if n["added_tasks"])["added_tasks"][-1]
    ratios = ", ".join(
        f"{seconds(n) / first['seconds']:.1f}× that to {label}"
        for label, n in numbers.items()
        if not n["added_tasks"]
    )
    lines += [
        "",
        f"Adding the task took {first['seconds']:.0f} s, against {ratios} (DeepObfuscator has "
        "no per-task part: a new task means retraining the obfuscator). ε went from "
        f"{_eps(first['epsilon_before'])} to {_eps(first['epsilon_after'])}: the new module's DP "
        f"steps compose with the run's. SSIM {new}–{private} is the audit's mean over test "
        "images: the SSIM term pushes it towards 0, and a shared map (DeepObfuscator) gives 1.",
    ]
    return lines


RENDERERS: dict[str, Callable[[Table, dict[str, dict[str, Any]]], list[str]]] = {
    "privacy": _privacy_lines,
    "dense": _dense_lines,
    "add_task": _add_task_lines,
}


def _figure(table: Table, numbers: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(numbers)
    if table.render == "dense":
        _dense_figure(table, numbers, path)
        return
    series = {}
    for t in table.public:
        series[f"{t} utility"] = [_first(n["utility"][t]) for n in numbers.values()]
    for s in table.public:
        for p in table.private:
            key = f"{s}→{p}"
            series[f"{key} kept head"] = [n["kept"][key] for n in numbers.values()]
            series[f"{key} retrained"] = [n["retrained"][key] for n in numbers.values()]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.6))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, fontsize=8)
    ax.set_ylim(0, 1.35)  # room above the bars for the legend
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("test metric")
    ax.set_title(table.title, fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _first(metrics: dict[str, float]) -> float:
    """The primary metric (metrics list it first)."""
    return next(iter(metrics.values()))


def _dense_figure(table: Table, numbers: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per dense task: its primary metric per run, on its own scale."""
    import matplotlib.pyplot as plt

    labels = list(numbers)
    fig, axes = plt.subplots(1, len(table.public), figsize=(3.2 * len(table.public), 3.2))
    for ax, task in zip(list(getattr(axes, "flat", [axes])), table.public, strict=True):
        metric = next(iter(numbers[labels[0]]["utility"][task]))
        ax.bar(labels, [n["utility"][task][metric] for n in numbers.values()])
        ax.set_title(f"{task}: {metric}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(table: Table, budget: str, seconds: float | None = None) -> Path:
    """``results/<table>/table.{md,json}`` and ``figure.png`` from the finished runs."""
    numbers = {
        label: _row_numbers(table, RUNS / budget / run.name) for label, run in table.rows.items()
    }
    out = RESULTS / table.key
    out.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/paper_tables.py {table.key} --budget {budget}"
    first = next(iter(numbers.values()))
    lines = [
        f"### {table.title}",
        "",
        f"`{command}` (budget `{budget}`: "
        + ("the configs as they are, full attack budget" if budget == "full" else QUICK_DESCRIPTION)
        + f"; {first['test_items']} test images; trained on "
        + "/".join(sorted({n["device"] for n in numbers.values()}))
        + "). Runs: "
        + ", ".join(f"`{run.name}`" for run in table.rows.values())
        + ".",
        "",
        *RENDERERS[table.render](table, numbers),
        "",
        f"![{table.key}](figure.png)",
    ]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    payload = {
        "table": table.key,
        "title": table.title,
        "budget": budget,
        "command": command,
        "runs": {label: run.name for label, run in table.rows.items()},
        "paper": table.paper,
        "numbers": numbers,
        "seconds": None if seconds is None else round(seconds, 1),
    }
    (out / "table.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    _figure(table, numbers, out / "figure.png")
    return out / "table.md"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tables", nargs="*", help=f"any of {sorted(TABLES)} or 'all'")
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--data-root", type=Path, default=DATA, help="folder holding celeba/, statefarm/, camvid/"
    )
    parser.add_argument(
        "--render", action="store_true", help="only render tables from finished runs"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    names = sorted(TABLES) if args.tables in ([], ["all"]) else args.tables
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; expected any of {sorted(TABLES)} or 'all'")
    for name in names:
        table = TABLES[name]
        started = time.perf_counter()
        if not args.render:
            for run in table.rows.values():
                train_and_audit(run, args.budget, args.device, args.data_root, not args.quiet)
        seconds = _previous_seconds(name) if args.render else time.perf_counter() - started
        _log(f"{name}: {render(table, args.budget, seconds)}")


def _previous_seconds(name: str) -> float | None:
    """The wall time recorded when the table's runs were made (kept by --render)."""
    path = RESULTS / name / "table.json"
    return json.loads(path.read_text()).get("seconds") if path.exists() else None


if __name__ == "__main__":
    main()
