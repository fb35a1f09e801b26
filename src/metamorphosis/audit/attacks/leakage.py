"""Leakage: how well the *best* attacker recovers each label from each released source.

For every feature source an attacker can hold (the encoder output, i.e. the
universal features, and every public task's released features) and every
other label (the other public tasks and the private attributes), every
registered attacker (:data:`~.attacker.ATTACKERS`, in :data:`DEFAULT_ATTACKERS`
order) trains with ``budget.restarts`` seeded restarts and early stopping on a
held-out slice of the train split, and is scored on the test split. The
headline is the best attacker over attackers and restarts: a defence that
only beats a weak attacker has not been shown to work (Song & Shmatikov,
ICLR 2020).

Each entry is set beside three reference points: the majority rate (what an
attacker learns from nothing), the label floor (what the source task's true
labels alone reveal, :func:`~metamorphosis.audit.attribute.label_floor`) and
the best attacker on the universal features. Leakage is bad when it
approaches the universal figure and unavoidable up to the label floor.

The consumer-architecture head also runs on the diagonal (a task from its own
features): those cells fill the retrained swap matrix, utility included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ...config import LabelSpec
from ...metrics import primary_metric
from ..attribute import label_floor, majority_rate
from ..budget import AttackBudget
from ..document import Document, number, percent
from ..features import ENCODER_SOURCE, FeatureSet
from . import knn, linear_probe, mlp, retrained_head  # noqa: F401  (they register themselves)
from .attacker import (
    ATTACKERS,
    Attacker,
    AttackerResult,
    Cell,
    SwapResult,
    attack_cells,
    holdout_split,
    make_cell,
)
from .base import Attack, AuditContext, Finding, HeadFactory, finding
from .kept_heads import swap_table

__all__ = [
    "DEFAULT_ATTACKERS",
    "Leakage",
    "LeakageEntry",
    "LeakageResult",
    "best_of",
    "measure_leakage",
    "plot_leakage",
    "plot_swap",
]

DEFAULT_ATTACKERS = ("retrained_head", "mlp", "linear_probe", "knn")
"""The attackers every (source, label) faces, in report order (ties go to the first)."""

HEAD = "retrained_head"
PROBE = "linear_probe"

#: A leak within this of the universal features' rate counts as "as large".
SAME_AS_UNIVERSAL = 0.02
#: Above the majority rate by more than this counts as leakage above chance.
ABOVE_CHANCE = 0.05
#: The best attacker beating the kept head by more than this is reported.
PROTOCOL_GAP = 0.10

_RATES = ("accuracy", "miou", "pixel_accuracy")


def best_of(values: Mapping[str, float | None], *, higher_is_better: bool) -> tuple[str, float]:
    """(name, value) of the best of ``values``: the maximum, or the minimum for a metric where
    lower is better; None and NaN are skipped, ties go to the first. ``("", nan)`` if none."""
    best: tuple[str, float] = ("", float("nan"))
    for name, value in values.items():
        if value is None or value != value:
            continue
        if best[0] == "" or (value > best[1] if higher_is_better else value < best[1]):
            best = (name, float(value))
    return best


@dataclass
class LeakageEntry:
    """One (source, label): every attacker's result and the reference points.

    Attributes:
        source: the feature source attacked (``encoder`` or a public task).
        label: the label attacked.
        metric: the label's primary metric.
        higher_is_better: its direction.
        results: attacker name -> its restarts' values (only the attackers that apply).
        majority: the majority-class rate on the test split (None for dense labels).
        label_floor: the label's accuracy from the source task's true test labels
            (None for the encoder and for dense labels).
        universal: the best attacker's value on the encoder output (None if not attacked).
    """

    source: str
    label: str
    metric: str
    higher_is_better: bool
    results: dict[str, AttackerResult]
    majority: float | None
    label_floor: float | None
    universal: float | None = None

    @property
    def best(self) -> tuple[str, float]:
        """(attacker, value) of the best attacker over attackers and restarts."""
        values = {name: result.best for name, result in self.results.items()}
        return best_of(values, higher_is_better=self.higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        attacker, value = self.best
        return {
            "source": self.source,
            "label": self.label,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "best": {"attacker": attacker or None, "value": value if attacker else None},
            "attackers": {name: result.best for name, result in self.results.items()},
            "restarts": {name: list(result.values) for name, result in self.results.items()},
            "majority": self.majority,
            "label_floor": self.label_floor,
            "universal": self.universal,
        }


@dataclass
class LeakageResult:
    """Every leakage entry, and the consumer-head attacker's full swap matrix."""

    entries: list[LeakageEntry]
    retrained: SwapResult
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """label -> attackers that do not apply to it (e.g. k-NN on a depth map)."""


def _cells(
    attacker: Attacker,
    pairs: Sequence[tuple[str, LabelSpec]],
    make: Callable[[LabelSpec, str], Cell],
) -> list[Cell]:
    diagonal = attacker.name == HEAD  # only the consumer head fills the matrix' diagonal
    return [
        make(spec, source)
        for source, spec in pairs
        if (diagonal or spec.name != source) and attacker.applies_to(spec)
    ]


def measure_leakage(
    make_head: HeadFactory | None,
    labels: Sequence[LabelSpec],
    train: FeatureSet,
    test: FeatureSet,
    *,
    sources: Sequence[str],
    budget: AttackBudget,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    attackers: Sequence[str] = DEFAULT_ATTACKERS,
) -> LeakageResult:
    """Every attacker on every (source, other label); see the module docstring.

    Args:
        make_head: a fresh consumer-architecture head (needed by ``retrained_head``).
        labels: every label that may be attacked.
        train: the attacker's training items (a held-out slice of them decides when
            each attacker stops).
        test: the items every attacker is scored on.
        sources: the feature sources attacked (``encoder`` gives the universal figures).
        budget: the attack budget (epochs cap, patience, held-out share, restarts).
        seed: the audit's seed.
        device: where attackers train.
        progress: show progress bars.
        attackers: registered attacker names, in report order.
    """
    make = partial(
        make_cell,
        train=train,
        test=test,
        split=holdout_split(len(train), budget.holdout, seed),
        make_head=make_head,
        budget=budget,
        device=device,
        progress=progress,
    )
    pairs = [(source, spec) for source in sources for spec in labels]
    found, skipped = _attack_all(attackers, pairs, make, test.targets, seed)
    retrained = SwapResult.of("retrained", labels)
    for (source, label), results in found.items():
        if HEAD in results:
            retrained.add(source, label, results[HEAD].details)
    return LeakageResult(_entries(pairs, found, train, test), retrained, skipped)


Found = dict[tuple[str, str], dict[str, AttackerResult]]
"""(source, label) -> attacker name -> its result."""


def _attack_all(
    attackers: Sequence[str],
    pairs: Sequence[tuple[str, LabelSpec]],
    make: Callable[[LabelSpec, str], Cell],
    test_targets: Mapping[str, Tensor],
    seed: int,
) -> tuple[Found, dict[str, list[str]]]:
    """Every attacker on every pair it applies to; and, per label, the attackers that do not."""
    found: Found = {}
    skipped: dict[str, list[str]] = {}
    for name in attackers:
        attacker = ATTACKERS.create(name)
        cells = _cells(attacker, pairs, make)
        results = attack_cells(attacker, cells, test_targets, seed=seed)
        for cell, result in zip(cells, results, strict=True):
            found.setdefault((cell.source, cell.spec.name), {})[name] = result
        for spec in {spec.name: spec for _, spec in pairs}.values():
            if not attacker.applies_to(spec):
                skipped.setdefault(spec.name, []).append(name)
    return found, skipped


def _entries(
    pairs: Sequence[tuple[str, LabelSpec]], found: Found, train: FeatureSet, test: FeatureSet
) -> list[LeakageEntry]:
    """One entry per (source, other label), each with the universal figure of its label."""
    entries = [
        _entry(source, spec, found.get((source, spec.name), {}), train, test)
        for source, spec in pairs
        if spec.name != source
    ]
    universal = {e.label: e.best for e in entries if e.source == ENCODER_SOURCE}
    for entry in entries:
        name, value = universal.get(entry.label, ("", float("nan")))
        entry.universal = value if name else None
    return entries


def _entry(
    source: str,
    spec: LabelSpec,
    results: dict[str, AttackerResult],
    train: FeatureSet,
    test: FeatureSet,
) -> LeakageEntry:
    metric, higher = primary_metric(spec.kind)
    floor = None
    if source != ENCODER_SOURCE and source in test.targets:  # a labelled public task
        floor = label_floor(test.targets[source], test.targets[spec.name])
    return LeakageEntry(
        source=source,
        label=spec.name,
        metric=metric,
        higher_is_better=higher,
        results=results,
        majority=majority_rate(spec, train.targets[spec.name], test.targets[spec.name]),
        label_floor=floor,
    )


def attribute_rows(
    entries: Sequence[Mapping[str, Any]], private: Sequence[str], tasks: Sequence[str]
) -> list[dict[str, Any]]:
    """The report's ``attribute_inference`` rows (kept for readers of earlier reports): per
    private attribute and source, the consumer head's and the linear probe's best restart."""
    by_pair = {(e["source"], e["label"]): e for e in entries}
    rows = []
    for attribute in private:
        universal = by_pair.get((ENCODER_SOURCE, attribute))
        for source in [*tasks, ENCODER_SOURCE]:
            entry = by_pair.get((source, attribute))
            if entry is None:
                continue
            rows.append(
                {
                    "source": source,
                    "attribute": attribute,
                    "metric": entry["metric"],
                    "head": entry["attackers"].get(HEAD),
                    "probe": entry["attackers"].get(PROBE),
                    "majority": entry["majority"],
                    "universal_head": universal and universal["attackers"].get(HEAD),
                    "universal_probe": universal and universal["attackers"].get(PROBE),
                    "label_floor": entry["label_floor"],
                }
            )
    return rows


# -- findings ---------------------------------------------------------------------------
def _as_large(entry: Mapping[str, Any], value: float, universal: float) -> bool:
    """Whether ``value`` recovers the label about as well as the universal features do."""
    margin = SAME_AS_UNIVERSAL if entry["metric"] in _RATES else SAME_AS_UNIVERSAL * abs(universal)
    if entry["higher_is_better"]:
        return value >= universal - margin
    return value <= universal + margin


def _numbers(entry: Mapping[str, Any]) -> str:
    metric, best = entry["metric"], entry["best"]
    parts = [f"best attacker {number(metric, best['value'])} ({best['attacker']})"]
    parts.append(f"universal features {number(metric, entry['universal'])}")
    if entry["majority"] is not None:
        parts.append(f"majority rate {percent(entry['majority'])}")
    if entry["label_floor"] is not None:
        parts.append(f"label floor {percent(entry['label_floor'])}")
    return ", ".join(parts)


def _entry_finding(entry: Mapping[str, Any]) -> Finding:
    where = f"`{entry['label']}` from `{entry['source']}` features"
    value, universal = entry["best"]["value"], entry["universal"]
    majority, floor = entry["majority"], entry["label_floor"]
    numbers = _numbers(entry)
    if majority is not None and value <= majority + ABOVE_CHANCE:
        return finding("ok", f"{where} is at chance level: {numbers}.")
    if floor is not None and value <= floor + ABOVE_CHANCE:
        text = (
            f"{where} leaks about what the `{entry['source']}` labels alone reveal "
            f"(the label floor): {numbers}."
        )
        return finding("note", text)
    if universal is not None and _as_large(entry, value, universal):
        return finding("warning", f"{where} leaks as much as the universal features: {numbers}.")
    below = "above chance but below" if majority is not None else "less than"
    return finding("note", f"{where} leaks {below} the universal features: {numbers}.")


def _protocol_gap(entry: Mapping[str, Any], kept: Mapping[str, Any]) -> Finding | None:
    """A note where the paper's kept-head protocol understates what the best attacker finds."""
    cell = (kept.get("matrix", {}).get(entry["source"]) or {}).get(entry["label"])
    value = entry["best"]["value"]
    if cell is None or not entry["higher_is_better"] or entry["metric"] not in ("accuracy", "miou"):
        return None
    if value - cell <= PROTOCOL_GAP:
        return None
    return finding(
        "note",
        f"`{entry['label']}` from `{entry['source']}` features: the paper's kept-head protocol "
        f"gives {number(entry['metric'], cell)} but the best attacker "
        f"({entry['best']['attacker']}) {number(entry['metric'], value)}; the kept-head figure "
        "understates the leak.",
    )


# -- figures ----------------------------------------------------------------------------
def _cell_colours(result: Mapping[str, Any], rows: list[str], columns: list[str]) -> np.ndarray:
    """Values mapped to [0, 1] on one scale per column: rates as they are, errors by column max.

    A shared colour scale keeps 86 % from looking "low" just because a
    neighbouring cell reads 93 %; error metrics (lower is better) are
    inverted so that bright always means "the label is recovered well".
    """
    colours = np.zeros((len(rows), len(columns)))
    for j, column in enumerate(columns):
        metric = result["metric"][column]
        values = np.array([result["matrix"][r].get(column, np.nan) for r in rows], dtype=float)
        if metric["name"] in _RATES:
            colours[:, j] = values
        else:
            scale = max(np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0, 1e-12)
            colours[:, j] = values / scale if metric["higher_is_better"] else 1 - values / scale
    return np.nan_to_num(colours)


def plot_swap(swap: Mapping[str, Any], path: str | Path) -> Path:
    """The swap matrices present in ``swap`` as heatmaps (rows: source, columns: label)."""
    panels = [
        (title, swap[key])
        for key, title in (
            ("kept_heads", "kept heads (paper protocol)"),
            ("retrained", "retrained consumer head"),
        )
        if key in swap
    ]
    figure = Figure(figsize=(5.5 * len(panels), 4.5), layout="constrained")
    for axes, (title, result) in zip(
        np.atleast_1d(figure.subplots(1, len(panels))), panels, strict=True
    ):
        rows = list(result["matrix"])
        columns = list(result["metric"])
        colours = _cell_colours(result, rows, columns)
        axes.imshow(colours, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axes.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
        axes.set_yticks(range(len(rows)), [f"{r} features" for r in rows])
        for i, row in enumerate(rows):
            for j, column in enumerate(columns):
                name = result["metric"][column]["name"]
                axes.text(
                    j,
                    i,
                    number(name, result["matrix"][row].get(column)),
                    ha="center",
                    va="center",
                    color="white" if colours[i, j] < 0.6 else "black",
                    fontsize=9,
                )
        axes.set_title(title)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_leakage(entries: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Per (source, label): the best attacker (bar), every attacker (markers), and the
    majority rate, label floor and universal figure; one panel per metric."""
    metrics = list(dict.fromkeys(e["metric"] for e in entries)) or ["accuracy"]
    attackers = list(dict.fromkeys(a for e in entries for a in e["attackers"]))
    heights = [sum(e["metric"] == m for e in entries) for m in metrics]
    figure = Figure(figsize=(9.5, 1.2 + 0.45 * max(sum(heights), 1)), layout="constrained")
    grid = figure.subplots(
        len(metrics), 1, squeeze=False, height_ratios=[max(h, 1) for h in heights]
    )
    for axes, metric in zip(grid[:, 0], metrics, strict=True):
        _leakage_panel(axes, [e for e in entries if e["metric"] == metric], metric, attackers)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


def _leakage_panel(
    axes: Any, rows: Sequence[Mapping[str, Any]], metric: str, attackers: list[str]
) -> None:
    y = np.arange(len(rows))
    best = [np.nan if r["best"]["value"] is None else r["best"]["value"] for r in rows]
    axes.barh(y, best, height=0.6, color="0.85", label="best attacker")
    for k, name in enumerate(attackers):
        values = [r["attackers"].get(name) for r in rows]
        shown = [(i, v) for i, v in enumerate(values) if v is not None]
        if shown:
            axes.scatter(
                [v for _, v in shown],
                [i for i, _ in shown],
                marker=_MARKERS[k % len(_MARKERS)],
                s=22,
                label=name,
                zorder=3,
            )
    references = (
        ("majority", "black", "-", "majority rate"),
        ("label_floor", "tab:red", "--", "label floor"),
        ("universal", "tab:green", ":", "universal (best)"),
    )
    for key, colour, style, label in references:
        marks = [(i, r[key]) for i, r in enumerate(rows) if r[key] is not None]
        for n, (i, value) in enumerate(marks):
            axes.plot(
                [value] * 2,
                [i - 0.4, i + 0.4],
                color=colour,
                lw=1.5,
                ls=style,
                label=label if n == 0 else None,
            )
    axes.set_yticks(y, [f"{r['label']} from {r['source']}" for r in rows])
    axes.invert_yaxis()  # top to bottom in the order of the report's table
    if metric in _RATES:
        axes.set_xlim(0, 1)
    axes.set_xlabel(f"{metric} on the test split")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # beside, not over


# -- the attack -------------------------------------------------------------------------
class Leakage(Attack):
    """``leakage``, ``swap.retrained`` and ``attribute_inference`` of the report."""

    name = "leakage"
    stage = "leakage (every attacker, every source and label)"
    assumes = (
        "Leakage: whoever holds a released feature source (a consumer of that public task; the "
        "encoder output stands for the universal features a producer without modules would "
        "release) also holds another label for the train split (e.g. from public profiles), "
        "trains each attacker on them with several seeded restarts and early stopping on a "
        "held-out slice, and is scored on the test split. The headline is the best attacker "
        "over attackers and restarts: a maximum of several test scores, so on a small test "
        "split it sits a little above the truth, never below."
    )

    def __init__(self, attackers: Sequence[str] = DEFAULT_ATTACKERS) -> None:
        self.attackers = tuple(attackers)

    def assumptions(self) -> dict[str, str]:
        named = {name: ATTACKERS.create(name).assumes for name in self.attackers}
        return {self.name: self.assumes, **named}

    def measure(self, context: AuditContext, report: Mapping[str, Any]) -> dict[str, Any]:
        result = measure_leakage(
            context.make_head,
            context.labels,
            context.train,
            context.test,
            sources=context.sources,
            budget=context.budget,
            seed=context.seed,
            device=context.device,
            progress=context.progress,
            attackers=self.attackers,
        )
        swap = {**report.get("swap", {}), "retrained": result.retrained.to_dict()}
        entries = [e.to_dict() for e in result.entries]
        plot_swap(swap, context.out_dir / "swap_matrix.png")
        plot_leakage(entries, context.out_dir / "leakage.png")
        private = [spec.name for spec in context.private]
        return {
            "swap": swap,
            "leakage": entries,
            "leakage_skipped": result.skipped,
            "attribute_inference": attribute_rows(entries, private, context.tasks),
        }

    def findings(self, report: Mapping[str, Any]) -> list[Finding]:
        kept = (report.get("swap") or {}).get("kept_heads") or {}
        out: list[Finding] = []
        for entry in report["leakage"]:
            if entry["source"] == ENCODER_SOURCE or entry["best"]["value"] is None:
                continue  # the universal figures are the reference, not a finding
            out.append(_entry_finding(entry))
            gap = _protocol_gap(entry, kept)
            if gap is not None:
                out.append(gap)
        return out

    def section(self, doc: Document, report: Mapping[str, Any]) -> None:
        doc.heading("Retrained consumer head (swap matrix)")
        doc.paragraph(report["assumptions"].get(HEAD, ""))
        swap_table(doc, report["swap"]["retrained"])
        doc.figure("swap_matrix.png", "Swap matrices: kept heads (left) and retrained head (right)")
        doc.heading("Leakage: the best attacker")
        doc.paragraph(self.assumes)
        doc.bullets([f"`{n}`: {report['assumptions'].get(n, '')}" for n in self._names(report)])
        skipped = report.get("leakage_skipped") or {}
        if skipped:
            doc.paragraph(
                "Not run (they cannot predict these labels): "
                + "; ".join(f"`{label}`: {', '.join(names)}" for label, names in skipped.items())
                + "."
            )
        self._table(doc, report["leakage"])
        doc.figure("leakage.png", "Every attacker per feature source and label, with references")

    def _names(self, report: Mapping[str, Any]) -> list[str]:
        return list(dict.fromkeys(a for e in report["leakage"] for a in e["attackers"]))

    def _table(self, doc: Document, entries: Sequence[Mapping[str, Any]]) -> None:
        names = list(dict.fromkeys(a for e in entries for a in e["attackers"]))
        header = [
            "label",
            "features",
            *names,
            "best (attacker)",
            "majority",
            "label floor",
            "universal",
        ]
        rows = []
        for e in entries:
            metric = e["metric"]
            rows.append(
                [
                    e["label"],
                    f"`{e['source']}`",
                    *[
                        number(metric, e["attackers"][n]) if n in e["attackers"] else "n/a"
                        for n in names
                    ],
                    f"**{number(metric, e['best']['value'])}** ({e['best']['attacker']})",
                    number(metric, e["majority"]),
                    number(metric, e["label_floor"]),
                    number(metric, e["universal"]),
                ]
            )
        doc.table(header, rows)
