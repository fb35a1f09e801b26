"""The paper's tables, reproduced in one harness: every method on the same data, splits and attacks.

    python benchmarks/paper_tables.py TABLE [TABLE ...] [--budget quick|full] [--device cpu|cuda]
    python benchmarks/paper_tables.py all --budget quick      # every table, 2 CPU cores
    python benchmarks/paper_tables.py --render                # tables from finished runs only
    python benchmarks/paper_tables.py --render-only           # tables from results/*/table.json

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
puts them on ``docs/RESULTS.md``. ``--render-only`` rewrites ``table.md`` from the numbers
kept in ``table.json`` (no run dirs needed; the figure is left as it is).

Every table sets the paper's figures beside ours, on rows marked ``*paper:*`` and read from
``benchmarks/paper_numbers.json`` (the paper's tables as data): the paper's own data and
scale, never ours. Every privacy cell reads *kept head / retrained head / **best attacker
(which)** / label floor*: the paper's swap protocol, the consumer-architecture head retrained
on the features, the strongest of the audit's attackers (``leakage`` in ``report.json``) and
what the public task's true labels alone reveal; ``—`` where a report predates a measure.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paper_numbers

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
class PaperRow:
    """A row that quotes the paper beside ours: its label (the paper's table) and its figures
    as text by our column key (``"smile"``, ``"smile→gender"``, ``"seg miou"``, ``"epsilon"``,
    ``"producer_mb"`` …); a column it lacks shows ``—``."""

    label: str
    cells: dict[str, str]


@dataclass(frozen=True)
class Table:
    """Rows (label → run) of one of the paper's tables and how to render them.

    ``paper`` rows quote the paper in our columns (rendered after ours, marked ``*paper:*``);
    ``paper_notes`` are lines under the table for the paper's cells without a column here
    (and whole paper tables with no row in common); ``paper_source`` says what the paper
    rows measured (its data and scale, or the stand-in's).
    """

    key: str
    title: str
    rows: dict[str, Run]
    render: str  # "privacy", "dense" or "add_task"
    public: tuple[str, ...] = ()
    private: tuple[str, ...] = ()
    paper: tuple[PaperRow, ...] = ()
    paper_notes: tuple[str, ...] = ()
    paper_source: str = ""
    note: str = ""
    cost: bool = False  # show the feature shape and the producer's size (the split trade-off)
    kept_gap: bool = False  # Fig. 9's measure: MetaMorphosis's kept-head leak under DeepObfuscator


# --- the paper's figures beside ours (from benchmarks/paper_numbers.json) ------------------------

_P = paper_numbers
_CELEBA = _P.setup("celeba")
_STATEFARM = _P.setup("statefarm")
_DENSE = _P.setup("dense")
_FIG9 = _P.figure("fig9")


def _t(key: str, row: str, column: str, scale: float = 1.0) -> str:
    return _P.shown(key, row, column, scale)


def _scale_note(dataset: str) -> str:
    info = {"celeba": _CELEBA, "statefarm": _STATEFARM}[dataset]
    size = info["image_size"]
    return (
        f"{info['train_images']:,} training images at {size}×{size}, {info['epochs']} epochs, "
        f"ε = {info['epsilon']:g}"
    )


def _table7_paper() -> tuple[tuple[PaperRow, ...], tuple[str, ...]]:
    eps = f"{_STATEFARM['epsilon']:g}"
    rows = tuple(
        PaperRow(
            f"{method} (Table 7)",
            {
                **({"epsilon": eps} if method == "MetaMorphosis" else {}),
                "behaviour": _t("table7", "behaviour → behaviour", method),
                "behaviour→driver": _t("table7", "behaviour → identity", method),
            },
        )
        for method in ("MetaMorphosis", "DeepObfuscator")
    )
    notes = (
        f"{_P.MARK} cells with no column here (Table 7, kept heads): identity features → "
        f"identity head {_t('table7', 'identity → identity', 'MetaMorphosis')} (MetaMorphosis) "
        f"and {_t('table7', 'identity → identity', 'DeepObfuscator')} (DeepObfuscator); "
        f"identity features → behaviour head "
        f"{_t('table7', 'identity → behaviour', 'MetaMorphosis')} (MetaMorphosis; "
        f"DeepObfuscator {_t('table7', 'identity → behaviour', 'DeepObfuscator')}).",
    )
    return rows, notes


def _fig9_row(label: str, *, gender_gaps: bool, cheekbones: bool) -> PaperRow:
    """Fig. 9's text: ranges across ω for three-task MetaMorphosis."""
    below = _FIG9["gender_points_below_deepobfuscator"]
    cells = {"epsilon": f"{_CELEBA['epsilon']:g}", "cheekbones": _P.span(_FIG9["cheekbones (%)"])}
    if not cheekbones:
        cells["smile"] = _P.span(_FIG9["smile (%)"])
    for source in ("smile", "cheekbones"):
        if gender_gaps or source == "cheekbones":
            cells[f"{source}→gender"] = f"{_P.span(below[source])} points under DeepObfuscator"
    return PaperRow(label, cells)


def _table8_paper() -> tuple[tuple[PaperRow, ...], tuple[str, ...]]:
    eps = f"{_CELEBA['epsilon']:g}"
    rows = (
        PaperRow(
            "MetaMorphosis (Table 8: smile and gender only)",
            {
                "epsilon": eps,
                "smile": _t("table8", "smile → smile", "MetaMorphosis"),
                "smile→gender": _t("table8", "smile → gender", "MetaMorphosis"),
            },
        ),
        PaperRow(
            "DeepObfuscator (Table 8)",
            {
                "smile": _t("table8", "smile → smile", "DeepObfuscator"),
                "smile→gender": _t("table8", "smile → gender", "DeepObfuscator"),
            },
        ),
        _fig9_row("MetaMorphosis across ω (Fig. 9, text only)", gender_gaps=True, cheekbones=False),
    )
    notes = (
        f"{_P.MARK} cells with no column here (Table 8, MetaMorphosis, kept heads): gender "
        f"features → gender head {_t('table8', 'gender → gender', 'MetaMorphosis')}, gender "
        f"features → smile head {_t('table8', 'gender → smile', 'MetaMorphosis')}. Fig. 9 gives "
        "ranges across its ω values, not per-ω numbers.",
    )
    return rows, notes


def _table12_paper() -> tuple[tuple[PaperRow, ...], tuple[str, ...]]:
    data = _P.table("table12")
    guess = data["likely_split_index"]
    eps = f"{_CELEBA['epsilon']:g}"
    rows = tuple(
        PaperRow(
            f"producer {size} MB, likely split {guess[size]} (Table 12)",
            {
                "epsilon": eps,
                "smile": _t("table12", size, "smile → smile"),
                "smile→gender": _t("table12", size, "smile → gender"),
                "producer_mb": size,
            },
        )
        for size in data["rows"]
    )
    deep = data["deepobfuscator"]

    def across(column: str) -> str:
        return " / ".join(_t("table12", size, column) for size in data["rows"])

    notes = (
        f"{_P.MARK} cells with no column here (Table 12, kept heads, by producer size): gender "
        f"→ gender {across('gender → gender')}, gender → smile {across('gender → smile')}, "
        f"consumer {across('consumer (MB)')} MB; DeepObfuscator ({deep['model']}, "
        f"{_P.show(deep['producer (MB)'])} MB producer, {_P.show(deep['consumer (MB)'])} MB "
        f"consumer) universal → gender {_P.show(deep['universal → gender'])}. The paper gives "
        "producer sizes, not split indices; the split is the transcription's inference from "
        "full-width ResNet-18 sizes (our producer is at half width and 32×32, so it is smaller).",
    )
    return rows, notes


def _add_task_paper() -> tuple[tuple[PaperRow, ...], tuple[str, ...]]:
    rows = (
        _fig9_row(
            "MetaMorphosis, 3 tasks trained jointly, across ω (Fig. 9, text only)",
            gender_gaps=False,
            cheekbones=True,
        ),
    )
    notes = (
        f"{_P.MARK} the paper gives no number for adding a task to a trained producer (it "
        "claims the scalability qualitatively); its row above is joint three-task training.",
    )
    return rows, notes


def _dense_cells(key: str, row: str, columns: dict[str, str]) -> dict[str, str]:
    """Our dense column → the paper's; its mIoU and pixel accuracy (%) as fractions, as ours."""
    return {
        ours: _t(key, row, theirs, 0.01 if "mIoU" in theirs or "pix acc" in theirs else 1)
        for ours, theirs in columns.items()
    }


def _synthetic_paper() -> tuple[tuple[PaperRow, ...], tuple[str, ...]]:
    utility = {
        "seg miou": "mIoU ↑",
        "seg pixel_accuracy": "pix acc ↑",
        "depth abs_err": "abs err ↓",
        "depth rel_err": "rel err ↓",
        "normals mean_angle": "normal mean ↓",
        "normals median_angle": "median ↓",
        "normals within_11_25": "≤11.25° ↑",
        "normals within_22_5": "≤22.5° ↑",
        "normals within_30": "≤30° ↑",
    }
    rows = tuple(
        PaperRow(f"{name}, NYU-v2 (Table 5)", _dense_cells("table5", name, utility))
        for name in _P.table("table5")["rows"]
    )
    swap = {  # our swap cell (primary metric of the target) → (paper row, column)
        "seg→depth": ("segmentation", "abs err"),
        "seg→normals": ("segmentation", "normal mean"),
        "depth→seg": ("depth", "mIoU"),
        "depth→normals": ("depth", "normal mean"),
        "normals→seg": ("surface normal", "mIoU"),
        "normals→depth": ("surface normal", "abs err"),
    }
    swap_row = PaperRow(
        "MetaMorphosis, NYU-v2 (Table 6)",
        {
            ours: _t("table6", row, column, 0.01 if column == "mIoU" else 1)
            for ours, (row, column) in swap.items()
        },
    )
    sizes = ", ".join(
        f"{name} {_t('table5', name, 'size (MB)')}" for name in _P.table("table5")["rows"]
    )
    notes = (
        f"{_P.MARK} model sizes (Table 5, MB): {sizes}. The paper's swap table (Table 6) in "
        "full, every metric of each target task:",
        "",
        *_P.markdown("table6"),
    )
    return (*rows, swap_row), notes


def _camvid_paper() -> tuple[tuple[PaperRow, ...], tuple[str, ...]]:
    utility = {"seg miou": "seg mIoU ↑", "seg pixel_accuracy": "seg pix acc ↑"}
    rows = tuple(
        PaperRow(f"{name}, Cityscapes (Table 3)", _dense_cells("table3", name, utility))
        for name in _P.table("table3")["rows"]
    )
    swap_row = PaperRow(
        "MetaMorphosis, Cityscapes, depth module → seg head (Table 4)",
        {"boundary→seg": _t("table4", "depth module → segmentation head", "seg mIoU", 0.01)},
    )
    depth = "; ".join(
        f"{name} abs err {_t('table3', name, 'depth abs err ↓')}, rel err "
        f"{_t('table3', name, 'depth rel err ↓')}, size {_t('table3', name, 'size (MB)')} MB"
        for name in _P.table("table3")["rows"]
    )
    seg_to_depth = "segmentation module → depth head"
    notes = (
        f"{_P.MARK} cells with no column here: depth, which boundaries stand in for (Table 3: "
        f"{depth}); Table 4, kept heads: {seg_to_depth} abs err "
        f"{_t('table4', seg_to_depth, 'depth abs err')}, rel err "
        f"{_t('table4', seg_to_depth, 'depth rel err')} (own modules "
        f"{_t('table4', 'own modules (diagonal)', 'depth abs err')} / "
        f"{_t('table4', 'own modules (diagonal)', 'depth rel err')}); depth module → "
        f"segmentation head pixel accuracy "
        f"{_t('table4', 'depth module → segmentation head', 'seg pix acc')} % (own "
        f"{_t('table4', 'own modules (diagonal)', 'seg pix acc')} %).",
    )
    return (*rows, swap_row), notes


def _table11_paper() -> tuple[tuple[PaperRow, ...], tuple[str, ...]]:
    notes = (
        f"{_P.MARK} the paper's Table 11 compares the modules on Cityscapes (segmentation and "
        "depth, SegNet), not on CelebA, so it shares no row with ours; quoted whole:",
        "",
        *_P.markdown("table11"),
    )
    return (), notes


def _paper_fields(builder) -> dict[str, Any]:
    rows, notes = builder()
    return {"paper": rows, "paper_notes": notes}


_CELEBA_SOURCE = (
    f"{_P.MARK} rows quote the paper: CelebA, {_scale_note('celeba')}, split 5 "
    "(its Table 8 reports smile and gender only)"
)
_DENSE_SOURCE = (
    f"SegNet, {_DENSE['epochs']} epochs, ω = {_DENSE['omega']:g}, {_DENSE['privacy']}; its mIoU "
    "and pixel accuracy (%) are divided by 100 to read as ours"
)


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
        **_paper_fields(_table7_paper),
        paper_source=f"{_P.MARK} rows quote the paper: StateFarm, {_scale_note('statefarm')}",
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
        **_paper_fields(_table8_paper),
        paper_source=_CELEBA_SOURCE + "; it does not give DeepObfuscator's weights",
        kept_gap=True,
    ),
    "table11": Table(
        "table11",
        "Cross-SEC against SEC (attention not swapped) on CelebA, ω = 0.001 (paper Table 11)",
        {"Cross-SEC": CELEBA_RUNS["omega_0.001"], "SEC": CELEBA_RUNS["sec"]},
        "privacy",
        public=("smile", "cheekbones"),
        private=("gender",),
        **_paper_fields(_table11_paper),
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
        **_paper_fields(_table12_paper),
        paper_source=f"{_P.MARK} rows quote the paper: CelebA, {_scale_note('celeba')}",
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
        **_paper_fields(_add_task_paper),
        paper_source=f"{_P.MARK} row quotes the paper: CelebA, {_scale_note('celeba')}",
    ),
    "dense_synthetic": Table(
        "dense_synthetic",
        "Generated scenes, standing in for NYU-v2: segmentation, depth, normals "
        "(paper Tables 5, 6)",
        {
            "MetaMorphosis": _dense("synthetic_metamorphosis", SYNTHETIC, "synthetic"),
            "KD-MTL": _dense("synthetic_kdmtl", SYNTHETIC, "synthetic", "method=kd-mtl", *BASELINE),
            "universal": _dense(
                "synthetic_universal", SYNTHETIC, "synthetic", "method=universal", *BASELINE
            ),
        },
        "dense",
        public=("seg", "depth", "normals"),
        **_paper_fields(_synthetic_paper),
        paper_source=(
            f"{_P.MARK} rows quote the paper on NYU-v2 (real indoor scenes, "
            f"{_DENSE['nyuv2']['train_images']:,} training images, {_DENSE['nyuv2']['classes']} "
            f"classes), for which our generated scenes stand in; {_DENSE_SOURCE}"
        ),
    ),
    "dense_camvid": Table(
        "dense_camvid",
        "CamVid, standing in for Cityscapes: segmentation and boundaries (paper Tables 3, 4)",
        {
            "MetaMorphosis": _dense("camvid_metamorphosis", CAMVID, "camvid"),
            "KD-MTL": _dense("camvid_kdmtl", CAMVID, "camvid", "method=kd-mtl", *BASELINE),
            "universal": _dense(
                "camvid_universal", CAMVID, "camvid", "method=universal", *BASELINE
            ),
        },
        "dense",
        public=("seg", "boundary"),
        **_paper_fields(_camvid_paper),
        paper_source=(
            f"{_P.MARK} rows quote the paper on Cityscapes "
            f"({_DENSE['cityscapes']['train_images']:,} training images, "
            f"{_DENSE['cityscapes']['classes']} classes, segmentation and depth), for which CamVid "
            f"stands in, and our boundary task for its depth; {_DENSE_SOURCE}"
        ),
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


#: Feature sources that name the encoder output (the universal features) in ``leakage``.
UNIVERSAL_SOURCES = ("universal", "encoder")


def _leakage(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``report.json``'s ``leakage`` entries by (feature source, label); empty for reports
    written before the audit named its best attacker."""
    return {(e["source"], e["label"]): e for e in report.get("leakage") or []}


def _label_floors(report: dict[str, Any]) -> dict[tuple[str, str], float | None]:
    """The label floors of ``attribute_inference`` (also in reports without ``leakage``)."""
    return {
        (row["source"], row["attribute"]): row.get("label_floor")
        for row in report.get("attribute_inference") or []
    }


def _row_numbers(table: Table, run_dir: Path) -> dict[str, Any]:
    """The numbers a table shows for one run, read from run.json and audit/report.json."""
    record = json.loads((run_dir / "run.json").read_text())
    report = json.loads((run_dir / "audit" / "report.json").read_text())
    kept = report["swap"]["kept_heads"]["matrix"]
    retrained = report["swap"]["retrained"]["matrix"]
    details = report["swap"]["retrained"]["details"]
    leakage = _leakage(report)
    floors = _label_floors(report)
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
        "best": {},
        "attackers": {},
        "label_floor": {},
        "universal_retrained": {},
        "universal_best": {},
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
            entry = leakage.get((source, target), {})
            numbers["kept"][key] = kept.get(source, {}).get(target)
            numbers["retrained"][key] = retrained.get(source, {}).get(target)
            numbers["retrained_details"][key] = details.get(source, {}).get(target)
            numbers["best"][key] = entry.get("best")
            numbers["attackers"][key] = entry.get("attackers")
            floor = entry.get("label_floor")
            numbers["label_floor"][key] = floors.get((source, target)) if floor is None else floor
    numbers["universal_retrained"] = retrained.get("encoder", {})
    numbers["universal_best"] = {
        label: entry.get("best")
        for (source, label), entry in leakage.items()
        if source in UNIVERSAL_SOURCES
    }
    return numbers


def _best(best: dict[str, Any] | None, fmt: Callable[[float | None], str]) -> str:
    """The best attacker's figure in bold, with its name; ``—`` when the report has none."""
    if not best or best.get("value") is None:
        return "—"
    return f"**{fmt(best['value'])}** ({best['attacker']})"


def _leak(n: dict[str, Any], key: str, fmt: Callable[[float | None], str] = _pct) -> str:
    """One privacy cell: kept head / retrained head / **best attacker (which)** / label floor.

    Numbers kept from before the audit named its best attacker (old ``table.json`` files and
    reports) have no ``best`` / ``label_floor``: those slots read ``—``."""
    return " / ".join(
        [
            fmt(n["kept"].get(key)),
            fmt(n["retrained"].get(key)),
            _best((n.get("best") or {}).get(key), fmt),
            fmt((n.get("label_floor") or {}).get(key)),
        ]
    )


#: The four slots of a privacy cell, for headers.
LEAK_SLOTS = "kept / retrained / **best (attacker)** / floor"


def _paper_leak(row: PaperRow, key: str) -> str:
    """The paper's privacy cell: its kept-head figure; it reports no other attacker."""
    return f"{row.cells.get(key, '—')} / — / — / —"


def _paper_label(row: PaperRow) -> str:
    return f"{paper_numbers.MARK} {row.label}"


def _legend(table: Table) -> list[str]:
    """What a privacy cell holds, what the paper rows are, and the paper's other cells."""
    floor = (
        "label floor (defined for class labels only, so — for dense targets)"
        if table.render == "dense"
        else "label floor (the target's accuracy from the source task's true test labels: no "
        "feature that serves the task leaks less)"
    )
    lines = [
        "",
        "Privacy cells: kept head (the paper's swap protocol) / retrained head (the consumer's "
        "architecture, trained on the features) / **best attacker** (the strongest of the "
        f"audit's attackers, named) / {floor}. — : not in the run's report (audited before "
        "the audit named its best attacker), or not reported by the paper (it measures the "
        "kept head only).",
    ]
    if table.paper_source:
        lines += ["", table.paper_source + "; its figures at its scale, never ours."]
    if table.paper_notes:
        lines += ["", *table.paper_notes]
    return lines


def _kept_gap_line(table: Table, numbers: dict[str, dict[str, Any]]) -> list[str]:
    """Fig. 9's measure: MetaMorphosis's kept-head leak, in points under DeepObfuscator's."""
    ours = [n for label, n in numbers.items() if label.startswith("MetaMorphosis")]
    deep = {label: n for label, n in numbers.items() if label.startswith("DeepObfuscator")}
    if not ours or not deep:
        return []
    below = paper_numbers.figure("fig9")["gender_points_below_deepobfuscator"]
    private = table.private[0]
    parts = []
    for source in table.public:
        key = f"{source}→{private}"
        spans = []
        for label, d in deep.items():
            gaps = [100 * (d["kept"][key] - m["kept"][key]) for m in ours]
            spans.append(f"{min(gaps):.1f}–{max(gaps):.1f} under {label}")
        paper = paper_numbers.span(below[source]) if source in below else "—"
        parts.append(f"{source} features {', '.join(spans)} ({paper_numbers.MARK} {paper})")
    return [
        "",
        f"Fig. 9's measure, the kept {private} head's accuracy on MetaMorphosis features in "
        f"points under DeepObfuscator's, across our ω: " + "; ".join(parts) + ".",
    ]


def _privacy_lines(table: Table, numbers: dict[str, dict[str, Any]]) -> list[str]:
    leaks = [f"{s}→{p}" for s in table.public for p in table.private]
    cross = [f"{s}→{t}" for s in table.public for t in table.public if s != t]
    header = ["run", "ε", *[f"{t} (%)" for t in table.public]]
    header += [f"{k} {LEAK_SLOTS} (%)" for k in leaks + cross]
    header += ["recon. PSNR from task features (dB)", "train (s)"]
    if table.cost:
        header += ["features", "producer (MB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        cells = [label, _eps(n["epsilon"])]
        for task in table.public:
            cells.append(_pct(_first(n["utility"][task])))
        cells += [_leak(n, key) for key in leaks + cross]
        psnr = [n["reconstruction"][t]["psnr"] for t in table.public if t in n["reconstruction"]]
        cells.append(_num(max(psnr), 1) if psnr else "—")
        cells.append(_num(n["train_seconds"], 0))
        if table.cost:
            cells += ["×".join(map(str, n["feature_shape"])), _num(n["producer_mb"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    for row in table.paper:
        cells = [_paper_label(row), row.cells.get("epsilon", "—")]
        cells += [row.cells.get(task, "—") for task in table.public]
        cells += [_paper_leak(row, key) for key in leaks + cross]
        cells += ["—", "—"]
        if table.cost:
            cells += [row.cells.get("features", "—"), row.cells.get("producer_mb", "—")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _legend(table)
    if table.kept_gap:
        lines += _kept_gap_line(table, numbers)
    any_run = next(iter(numbers.values()))
    majority = ", ".join(f"{k} {_pct(v)}" for k, v in any_run["majority"].items())
    lines += [
        "",
        f"Majority rates: {majority}. Mean-image reconstruction guess: "
        f"{_num(any_run['reconstruction_baseline']['psnr'], 1)} dB; "
        "universal features (encoder output) give "
        f"{_num(any_run['reconstruction'].get('encoder', {}).get('psnr'), 1)} dB.",
    ]
    return lines


def _dense_lines(table: Table, numbers: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(numbers.values()))
    metric_names = {t: list(first["utility"][t]) for t in table.public}
    columns = [f"{t} {m}" for t in table.public for m in metric_names[t]]
    header = ["run", *columns, "train (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        cells = [label]
        cells += [_num(n["utility"][t][m]) for t in table.public for m in metric_names[t]]
        cells.append(_num(n["train_seconds"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    for row in table.paper:
        if any(c in row.cells for c in columns):
            cells = [_paper_label(row), *[row.cells.get(c, "—") for c in columns], "—"]
            lines.append("| " + " | ".join(cells) + " |")
    keys = [f"{s}→{t}" for s in table.public for t in table.public if s != t]
    lines += ["", f"Swap (primary metric of the target task): {LEAK_SLOTS}.", ""]
    header = ["run", *keys]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        cells = [label] + [_leak(n, k, _num) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    for row in table.paper:
        if any(k in row.cells for k in keys):
            cells = [_paper_label(row), *[_paper_leak(row, k) for k in keys]]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + _legend(table)


def _add_task_lines(table: Table, numbers: dict[str, dict[str, Any]]) -> list[str]:
    """Rows that added the task (time of the add-task step) against rows that retrained.

    The added task is the table's last public task; the first is one the run had.
    """
    new, old, private = table.public[-1], table.public[0], table.private[0]
    keys = (f"{new}→{private}", f"{old}→{new}")

    def seconds(n: dict[str, Any]) -> float:
        return n["added_tasks"][-1]["seconds"] if n["added_tasks"] else n["train_seconds"]

    header = [
        f"way to get {new} features",
        "training time (s)",
        "ε",
        f"{new} (%)",
        *[f"{key} {LEAK_SLOTS} (%)" for key in keys],
        f"SSIM {new}–{private}",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, n in numbers.items():
        cells = [label, _num(seconds(n), 0), _eps(n["epsilon"]), _pct(_first(n["utility"][new]))]
        cells += [_leak(n, key) for key in keys]
        similarity = (n["ssim_between_tasks"] or {}).get("ssim", {})
        cells.append(_num(similarity.get(f"{new}|{private}")))
        lines.append("| " + " | ".join(cells) + " |")
    for row in table.paper:
        cells = [_paper_label(row), "—", row.cells.get("epsilon", "—"), row.cells.get(new, "—")]
        cells += [_paper_leak(row, key) for key in keys]
        cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    first = next(n for n in numbers.values() if n["added_tasks"])["added_tasks"][-1]
    ratios = ", ".join(
        f"{seconds(n) / first['seconds']:.1f}× that to {label}"
        for label, n in numbers.items()
        if not n["added_tasks"]
    )
    lines += _legend(table)
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


def render(
    table: Table,
    budget: str,
    seconds: float | None = None,
    numbers: dict[str, dict[str, Any]] | None = None,
    figure: bool = True,
) -> Path:
    """``results/<table>/table.{md,json}`` (and ``figure.png`` unless ``figure`` is false) from
    the finished runs, or from ``numbers`` when given (those kept in ``table.json``)."""
    if numbers is None:
        numbers = {
            label: _row_numbers(table, RUNS / budget / run.name)
            for label, run in table.rows.items()
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
        "paper": [{"label": row.label, "cells": row.cells} for row in table.paper],
        "paper_notes": list(table.paper_notes),
        "numbers": numbers,
        "seconds": None if seconds is None else round(seconds, 1),
    }
    (out / "table.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if figure or not (out / "figure.png").exists():
        _figure(table, numbers, out / "figure.png")
    return out / "table.md"


def render_kept(table: Table) -> Path:
    """Re-render ``table.md`` from the numbers kept in ``results/<table>/table.json``: no run
    dirs, no training, no audit (the figure, drawn from the same numbers, is kept)."""
    path = RESULTS / table.key / "table.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `paper_tables.py {table.key}` first")
    kept = json.loads(path.read_text())
    runs = {label: run.name for label, run in table.rows.items()}
    if kept["runs"] != runs:
        raise SystemExit(
            f"{path} holds runs {kept['runs']}, the table now has {runs}: rerun the table"
        )
    return render(table, kept["budget"], kept["seconds"], numbers=kept["numbers"], figure=False)


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
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only rewrite table.md from the numbers kept in results/<table>/table.json "
        "(no run dirs needed; --budget is the one recorded there)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    names = sorted(TABLES) if args.tables in ([], ["all"]) else args.tables
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; expected any of {sorted(TABLES)} or 'all'")
    for name in names:
        table = TABLES[name]
        if args.render_only:
            _log(f"{name}: {render_kept(table)}")
            continue
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
