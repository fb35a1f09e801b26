"""The paper's reported numbers (MetaMorphosis, IoTDI 2023), read from ``paper_numbers.json``.

``paper_numbers.json`` transcribes every table of the paper (Tables 3–12) and the text of
Fig. 9 as data, as the paper prints them (accuracies in %); ``tests/test_paper_numbers.py``
checks it cell for cell against ``../shared/paper/NUMBERS.md`` when that file is present.
``benchmarks/paper_tables.py`` and ``benchmarks/results_page.py`` quote the paper only
through this module, and always on a row or line marked :data:`MARK`: the paper's figures,
at the paper's scale, never ours.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().with_name("paper_numbers.json")
#: How a row or a line that quotes the paper starts.
MARK = "*paper:*"


@cache
def numbers() -> dict[str, Any]:
    """The whole transcription."""
    return json.loads(PATH.read_text())


def table(key: str) -> dict[str, Any]:
    """One table (``"table8"``): caption, columns, rows by name and cell notes."""
    return numbers()["tables"][key]


def cell(key: str, row: str, column: str) -> float | str | None:
    """A cell as the paper prints it (None: the paper gives no number). A row or column the
    table does not have is an error (a typo must not read as "not reported")."""
    return table(key)["rows"][row][column]


def show(value: float | str | None, scale: float = 1.0) -> str:
    """``98.69`` -> ``98.69``; None -> ``—``; text as it is; ``scale`` converts units."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value * scale:g}"


def shown(key: str, row: str, column: str, scale: float = 1.0, unit: str = "") -> str:
    """A cell as text (``unit`` after a number, e.g. ``" %"``), with the transcription's note
    on it (e.g. where the paper's text and table disagree)."""
    value = cell(key, row, column)
    text = show(value, scale) + (unit if value is not None else "")
    note = table(key).get("notes", {}).get(f"{row} | {column}")
    return f"{text} ({note})" if note else text


def span(values: list[float]) -> str:
    """``[89.78, 89.89]`` -> ``89.78–89.89``."""
    return "–".join(show(v) for v in values)


def setup(dataset: str) -> dict[str, Any]:
    """The training setup the paper states for ``celeba``, ``statefarm`` or ``dense``."""
    return numbers()["setup"][dataset]


def figure(key: str) -> dict[str, Any]:
    """What the transcription has of a figure (``fig9``: its text's ranges)."""
    return numbers()["figures"][key]


def markdown(key: str) -> list[str]:
    """The paper's table verbatim as markdown, its caption and every row marked as the paper's."""
    data = table(key)
    width = data["key_columns"]
    lines = [
        f"{MARK} Table {key.removeprefix('table')} — {data['caption']}",
        "",
        "| " + " | ".join(data["columns"]) + " |",
        "|" + "---|" * len(data["columns"]),
    ]
    for name, cells in data["rows"].items():
        shown_cells = [shown(key, name, column) for column in cells]
        lines.append("| " + " | ".join([*name.split(" | ")[:width], *shown_cells]) + " |")
    return lines
