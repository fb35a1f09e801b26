"""Findings, figures and the written report of an audit.

:func:`findings` turns the measurements into flagged statements (a leak as
large as the universal features' is a warning, not a footnote);
:func:`write_report` writes ``report.json``, ``report.md``, ``report.html``
and the summary figures into the audit folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_write, json_safe
from .document import Document, number, percent

__all__ = ["findings", "write_report", "plot_swap", "plot_attribute", "REPORT_FILES"]

REPORT_FILES = ("report.json", "report.md", "report.html")

#: A leak within this of the universal features' rate counts as "as large".
SAME_AS_UNIVERSAL = 0.02
#: Above the majority rate by more than this counts as leakage above chance.
ABOVE_CHANCE = 0.05
#: The retrained attacker beating the kept head by more than this is reported.
PROTOCOL_GAP = 0.10
#: Reconstruction PSNR within this many dB of the universal features' is "as invertible".
SAME_PSNR_DB = 0.5
#: Reconstruction within this many dB of the mean-image guess has learnt nothing.
NO_BETTER_THAN_GUESS_DB = 1.0


def _finding(level: str, text: str) -> dict[str, str]:
    return {"level": level, "text": text}


def _attribute_findings(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    out = []
    for row in rows:
        if row["source"] == "encoder":
            continue
        best = max(row["head"], row["probe"])
        universal = max(row["universal_head"], row["universal_probe"])
        where = f"`{row['attribute']}` from `{row['source']}` features"
        floor = row.get("label_floor")
        numbers = (
            f"best attacker {percent(best)}, universal features {percent(universal)}, "
            f"majority rate {percent(row['majority'])}"
            + ("" if floor is None else f", label floor {percent(floor)}")
        )
        at_chance = row["majority"] is not None and best <= row["majority"] + ABOVE_CHANCE
        if at_chance:
            out.append(_finding("ok", f"{where} is at chance level: {numbers}."))
        elif floor is not None and best <= floor + ABOVE_CHANCE:
            text = (
                f"{where} leaks about what the `{row['source']}` labels alone reveal "
                f"(the label floor): {numbers}."
            )
            out.append(_finding("note", text))
        elif best >= universal - SAME_AS_UNIVERSAL:
            text = f"{where} leaks as much as the universal features: {numbers}."
            out.append(_finding("warning", text))
        else:
            text = f"{where} leaks above chance but below the universal features: {numbers}."
            out.append(_finding("note", text))
    return out


def _swap_findings(
    swap: Mapping[str, Any], tasks: Sequence[str], majority: Mapping[str, float | None]
) -> list[dict[str, str]]:
    kept, retrained = swap["kept_heads"], swap["retrained"]
    out = []
    for target in tasks:
        name = retrained["metric"][target]["name"]
        higher = retrained["metric"][target]["higher_is_better"]
        sign = 1.0 if higher else -1.0
        universal = retrained["matrix"]["encoder"][target]
        for source in tasks:
            if source == target:
                continue
            cell = retrained["matrix"][source][target]
            where = f"`{target}` from `{source}` features"
            chance = majority.get(target)
            if chance is not None and cell <= chance + ABOVE_CHANCE:
                continue  # at chance: nothing leaks, whatever the universal features give
            if sign * (cell - universal) >= -SAME_AS_UNIVERSAL * abs(universal or 1.0):
                out.append(
                    _finding(
                        "warning",
                        f"{where}: a retrained head reaches "
                        f"{number(name, cell)}, as much as the universal features "
                        f"({number(name, universal)}).",
                    )
                )
            kept_cell = kept["matrix"][source][target]
            if higher and name in ("accuracy", "miou") and cell - kept_cell > PROTOCOL_GAP:
                out.append(
                    _finding(
                        "note",
                        f"{where}: the paper's kept-head protocol gives "
                        f"{number(name, kept_cell)} but a retrained head "
                        f"{number(name, cell)}; the kept-head figure understates "
                        "the leak.",
                    )
                )
    return out


def _reconstruction_findings(recon: Mapping[str, Any], tasks: Sequence[str]) -> list[dict]:
    scores, baseline = recon["scores"], recon["baseline"]
    universal = scores["encoder"]["psnr"]
    out = []
    for task in tasks:
        psnr = scores[task]["psnr"]
        gain = psnr - baseline["psnr"]
        text = (
            f"reconstruction from `{task}` features: PSNR {psnr:.2f} dB (universal "
            f"features {universal:.2f} dB, mean-image guess {baseline['psnr']:.2f} dB)"
        )
        if gain <= NO_BETTER_THAN_GUESS_DB:
            out.append(_finding("ok", text + "; no better than the mean-image guess."))
        elif psnr >= universal - SAME_PSNR_DB:
            out.append(_finding("warning", text + "; as invertible as the universal features."))
        else:
            out.append(_finding("note", text + f"; {gain:+.2f} dB over the mean-image guess."))
    return out


def findings(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """Flagged statements, warnings first: leaks that match the universal baseline, etc."""
    tasks = report["run"]["tasks"]
    out = _attribute_findings(report["attribute_inference"])
    out += _swap_findings(report["swap"], tasks, report["majority"])
    out += _reconstruction_findings(report["reconstruction"], tasks)
    order = {"warning": 0, "note": 1, "ok": 2}
    return sorted(out, key=lambda f: order[f["level"]])


# -- figures ----------------------------------------------------------------------
def _cell_colours(result: Mapping[str, Any], rows: list[str], columns: list[str]) -> np.ndarray:
    """Values mapped to [0, 1] on one scale per column: rates as they are, errors by column max.

    A shared colour scale keeps 86 % from looking "low" just because a
    neighbouring cell reads 93 %; error metrics (lower is better) are
    inverted so that bright always means "the label is recovered well".
    """
    colours = np.zeros((len(rows), len(columns)))
    for j, column in enumerate(columns):
        metric = result["metric"][column]
        values = np.array([result["matrix"][r][column] for r in rows], dtype=float)
        if metric["name"] in ("accuracy", "miou", "pixel_accuracy"):
            colours[:, j] = values
        else:
            scale = max(np.abs(values).max(), 1e-12)
            colours[:, j] = values / scale if metric["higher_is_better"] else 1 - values / scale
    return colours


def plot_swap(swap: Mapping[str, Any], path: str | Path) -> Path:
    """Both swap matrices as heatmaps (rows: feature source, columns: label)."""
    panels = [
        ("kept heads (paper protocol)", swap["kept_heads"]),
        ("retrained attacker", swap["retrained"]),
    ]
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    for axes, (title, result) in zip(figure.subplots(1, 2), panels, strict=True):
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
                    number(name, result["matrix"][row][column]),
                    ha="center",
                    va="center",
                    color="white" if colours[i, j] < 0.6 else "black",
                    fontsize=9,
                )
        axes.set_title(title)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


def plot_attribute(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Attribute inference per (source, attribute): head, probe, majority and label floor."""
    figure = Figure(figsize=(8, 0.6 + 0.55 * max(len(rows), 1)), layout="constrained")
    axes = figure.subplots()
    labels = [f"{r['attribute']} from {r['source']}" for r in rows]
    y = np.arange(len(rows))
    axes.barh(y - 0.2, [r["head"] for r in rows], height=0.4, label="head attacker")
    axes.barh(y + 0.2, [r["probe"] for r in rows], height=0.4, label="linear probe")
    for i, r in enumerate(rows):
        if r["majority"] is not None:
            axes.plot(
                [r["majority"]] * 2,
                [i - 0.45, i + 0.45],
                color="black",
                lw=1.5,
                label="majority rate" if i == 0 else None,
            )
    floors = [(i, r["label_floor"]) for i, r in enumerate(rows) if r.get("label_floor") is not None]
    for n, (i, floor) in enumerate(floors):
        axes.plot(
            [floor] * 2,
            [i - 0.45, i + 0.45],
            color="tab:red",
            lw=1.5,
            ls="--",
            label="label floor" if n == 0 else None,
        )
    axes.set_yticks(y, labels)
    axes.set_xlim(0, 1)
    axes.set_xlabel("attacker accuracy on the test split")
    axes.legend(loc="lower right", fontsize=8)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


# -- the document -------------------------------------------------------------------
def _header(doc: Document, report: Mapping[str, Any]) -> None:
    run, budget = report["run"], report["budget"]
    eps = run["epsilon"]
    privacy = "no DP" if eps is None else f"ε = {eps:.3g} (δ = {run['delta']:g})"
    doc.paragraph(
        f"Run `{report['run_dir']}`: method `{run.get('method', 'metamorphosis')}`, "
        f"{run['encoder']} split {run['split_index']}, module `{run['module']}`, privacy mode "
        f"`{run['mode']}`, {privacy}. Public tasks: "
        f"{', '.join(run['tasks'])}; private attributes: "
        f"{', '.join(run['private_attributes']) or 'none'}."
    )
    doc.paragraph(
        f"Every number is measured on the held-out test split ({report['data']['test_items']} "
        f"images); attackers train on {report['data']['train_items']} train-split images. "
        f"Attack budget `{budget['name']}`: {budget['epochs']} epochs per classifier, "
        f"{budget['reconstruction_epochs']} per decoder, batch {budget['batch_size']}, "
        f"Adam lr {budget['lr']:g}; seed {report['seed']}; device {report['device']}."
    )


def _swap_section(doc: Document, report: Mapping[str, Any]) -> None:
    doc.heading("Task-privacy swap matrices")
    for key in ("kept_heads", "retrained"):
        result = report["swap"][key]
        doc.paragraph(report["assumptions"][key])
        labels = list(result["metric"])
        header = ["features ↓ / label →"] + [f"{c} ({result['metric'][c]['name']})" for c in labels]
        rows = [
            [f"`{source}`"]
            + [number(result["metric"][c]["name"], result["matrix"][source][c]) for c in labels]
            for source in result["matrix"]
        ]
        doc.table(header, rows)
    doc.figure("swap_matrix.png", "Swap matrices: kept heads (left) and retrained attacker (right)")


def _attribute_section(doc: Document, report: Mapping[str, Any]) -> None:
    rows = report["attribute_inference"]
    if not rows:
        return
    doc.heading("Attribute inference")
    doc.paragraph(report["assumptions"]["attribute"])
    doc.table(
        [
            "attribute",
            "features",
            "head attacker",
            "linear probe",
            "majority rate",
            "label floor",
            "universal (head / probe)",
        ],
        [
            [
                r["attribute"],
                f"`{r['source']}`",
                number(r["metric"], r["head"]),
                number(r["metric"], r["probe"]),
                number(r["metric"], r["majority"]),
                number(r["metric"], r.get("label_floor")),
                f"{number(r['metric'], r['universal_head'])} / "
                f"{number(r['metric'], r['universal_probe'])}",
            ]
            for r in rows
        ],
    )
    doc.figure("attribute_inference.png", "Attribute inference accuracy per feature source")


def _reconstruction_section(doc: Document, report: Mapping[str, Any]) -> None:
    recon = report["reconstruction"]
    doc.heading("Reconstruction attack")
    doc.paragraph(report["assumptions"]["reconstruction"])
    rows = [
        [f"`{s}`", f"{v['psnr']:.2f}", f"{v['ssim']:.3f}", f"{v['ms_ssim']:.3f}"]
        for s, v in recon["scores"].items()
    ]
    base = recon["baseline"]
    rows.append(
        ["mean-image guess", f"{base['psnr']:.2f}", f"{base['ssim']:.3f}", f"{base['ms_ssim']:.3f}"]
    )
    doc.table(["features", "PSNR (dB)", "SSIM", "MS-SSIM"], rows)
    doc.figure("reconstruction.png", "Test images (top) and their reconstructions per source")


def _tsne_section(doc: Document, report: Mapping[str, Any]) -> None:
    tsne = report.get("tsne")
    if not tsne:  # a producer with one module has nothing to compare
        return
    doc.heading("Task features compared (t-SNE)")
    doc.paragraph(report["assumptions"]["tsne"])
    if tsne.get("separation") is not None:
        doc.paragraph(
            f"Separation of the sources in the embedding (accuracy of predicting the source "
            f"from the 2-D point; chance {percent(1 / len(tsne['sources']))}): "
            f"{percent(tsne['separation'])}."
        )
    similarity = report.get("similarity") or {}
    pairs = sorted(set(similarity.get("ssim", {})) | set(similarity.get("cosine", {})))
    if pairs:
        doc.table(
            ["pair", "mean SSIM", "mean cosine"],
            [
                [
                    p.replace("|", " / "),
                    _maybe(similarity.get("ssim", {}).get(p)),
                    _maybe(similarity.get("cosine", {}).get(p)),
                ]
                for p in pairs
            ],
        )
    doc.figure("tsne.png", "t-SNE of the features of the same test images, per source")


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _cost_section(doc: Document, report: Mapping[str, Any]) -> None:
    from .cost import format_cost_table

    doc.heading("Producer cost")
    doc.paragraph(format_cost_table(report["cost"]))


def _sweep_sections(doc: Document, report: Mapping[str, Any]) -> None:
    for name, sweep in (report.get("sweeps") or {}).items():
        doc.heading(f"Sweep: {name}")
        doc.paragraph(sweep["description"])
        doc.table(sweep["header"], sweep["rows"])
        doc.figure(sweep["figure"], sweep["caption"])


def build_document(report: Mapping[str, Any]) -> Document:
    """The report as a :class:`Document` (rendered to Markdown and HTML)."""
    doc = Document(f"Privacy audit of {Path(report['run_dir']).name}")
    _header(doc, report)
    doc.heading("Findings")
    icons = {"warning": "**warning**", "note": "note", "ok": "ok"}
    doc.bullets([f"{icons[f['level']]}: {f['text']}" for f in report["findings"]])
    _swap_section(doc, report)
    _attribute_section(doc, report)
    _reconstruction_section(doc, report)
    _tsne_section(doc, report)
    _cost_section(doc, report)
    _sweep_sections(doc, report)
    return doc


def _text_writer(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return write


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` (figures must exist already).

    ``report.json`` is strict JSON: a number that is not finite (a PSNR of a
    perfect reconstruction, a metric on an empty class, ε = ∞) is written as
    ``null``, which in the report means "not finite / not measured".
    """
    out_dir = Path(out_dir)
    document = build_document(report)
    paths = {name: out_dir / name for name in REPORT_FILES}
    texts = {
        "report.json": json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n",
        "report.md": document.markdown(),
        "report.html": document.html(out_dir),
    }
    for name, text in texts.items():
        atomic_write(paths[name], _text_writer(text))
    return paths
