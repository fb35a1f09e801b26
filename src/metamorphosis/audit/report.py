"""Findings and the written report of an audit.

Each attack (:mod:`.attacks`) flags its own findings and writes its own
section; this module puts them together: :func:`findings` collects the
flagged statements (warnings first: a leak as large as the universal
features' is a warning, not a footnote) and :func:`write_report` writes
``report.json``, ``report.md`` and ``report.html`` into the audit folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write, json_safe
from .attacks.base import Attack, Finding
from .document import Document
from .measurements import default_measurements

__all__ = ["REPORT_FILES", "build_document", "findings", "write_report"]

REPORT_FILES = ("report.json", "report.md", "report.html")

_LEVELS = {"warning": 0, "note": 1, "ok": 2}


def findings(
    report: Mapping[str, Any], measurements: Sequence[Attack] | None = None
) -> list[Finding]:
    """Every measurement's flagged statements, warnings first (stable within a level)."""
    out: list[Finding] = []
    for measurement in default_measurements() if measurements is None else measurements:
        out += measurement.findings(report)
    return sorted(out, key=lambda f: _LEVELS[f["level"]])


def _budget_text(budget: Mapping[str, Any]) -> str:
    epochs = budget["epochs"]
    patience, holdout = budget.get("patience"), budget.get("holdout", 0)
    stopping = (
        f"up to {epochs} epochs per classifier attacker, stopped after {patience} without "
        f"improvement on a held-out {100 * holdout:.0f} % of its training items"
        if patience is not None
        else f"{epochs} epochs per classifier attacker"
    )
    return (
        f"Attack budget `{budget['name']}`: {stopping}, best of {budget.get('restarts', 1)} "
        f"seeded restarts; {budget['reconstruction_epochs']} epochs per decoder, batch "
        f"{budget['batch_size']}, Adam lr {budget['lr']:g}"
    )


def _header(doc: Document, report: Mapping[str, Any]) -> None:
    run = report["run"]
    eps = run["epsilon"]
    privacy = "no DP" if eps is None else f"ε = {eps:.3g} (δ = {run['delta']:g})"
    doc.paragraph(
        f"Run `{report['run_dir']}`: method `{run.get('method', 'metamorphosis')}`, "
        f"{run['encoder']} split {run['split_index']}, module `{run['module']}`, privacy mode "
        f"`{run['mode']}`, {privacy}. Public tasks: "
        f"{', '.join(run['tasks'])}; private attributes: "
        f"{', '.join(run['private_attributes']) or 'none'}."
    )
    if run.get("privacy_scope"):
        doc.paragraph(f"What the privacy numbers cover: {run['privacy_scope']}")
    doc.paragraph(
        f"Every number is measured on the held-out test split ({report['data']['test_items']} "
        f"images); attackers train on {report['data']['train_items']} train-split images. "
        f"{_budget_text(report['budget'])}; seed {report['seed']}; device {report['device']}."
    )


def _sweep_sections(doc: Document, report: Mapping[str, Any]) -> None:
    for name, sweep in (report.get("sweeps") or {}).items():
        doc.heading(f"Sweep: {name}")
        doc.paragraph(sweep["description"])
        doc.table(sweep["header"], sweep["rows"])
        doc.figure(sweep["figure"], sweep["caption"])


def build_document(
    report: Mapping[str, Any], measurements: Sequence[Attack] | None = None
) -> Document:
    """The report as a :class:`Document` (rendered to Markdown and HTML)."""
    doc = Document(f"Privacy audit of {Path(report['run_dir']).name}")
    _header(doc, report)
    doc.heading("Findings")
    icons = {"warning": "**warning**", "note": "note", "ok": "ok"}
    doc.bullets([f"{icons[f['level']]}: {f['text']}" for f in report["findings"]])
    for measurement in default_measurements() if measurements is None else measurements:
        measurement.section(doc, report)
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
