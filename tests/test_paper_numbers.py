"""benchmarks/paper_numbers.json: the paper's tables, as data, agree with their transcription.

The results pages quote the paper only through ``benchmarks/paper_numbers.json`` (committed, so
the page is generated from the repository alone). When the shared transcription
``../shared/paper/NUMBERS.md`` is present, every table, caption, cell and note there must match
the JSON cell for cell; without it those checks skip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
JSON_PATH = REPO / "benchmarks" / "paper_numbers.json"
NUMBERS_MD = REPO.parent / "shared" / "paper" / "NUMBERS.md"

#: Tables whose rows are named by more than their first column.
KEY_COLUMNS = {"table11": 2}
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _sections(text: str) -> dict[str, tuple[str, str]]:
    """``{"table3": (caption, body), "fig9": ..., "setup": ..., ...}`` from ``## `` headings."""
    out: dict[str, tuple[str, str]] = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        match = re.match(r"(Table|Fig\.) (\d+) — (.*)", heading)
        if match:
            kind = "table" if match.group(1) == "Table" else "fig"
            out[f"{kind}{match.group(2)}"] = (match.group(3), body)
        else:
            out[heading.split()[0].lower()] = (heading, body)
    return out


def _cell(raw: str) -> tuple[Any, str | None]:
    """A cell's value and its note: ``—`` is None; ``(18.14)`` is 18.14 (a repeated cell);
    ``30.28 (the text says 30.38)`` is 30.28 with that note; other text stays text."""
    raw = raw.strip()
    if raw == "—":
        return None, None
    match = re.fullmatch(r"\(?(-?\d+(?:\.\d+)?)\)?(?: \((.*)\))?", raw)
    if match:
        return float(match.group(1)), match.group(2)
    return raw, None


def _md_table(body: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in body.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def parse_table(key: str, body: str) -> dict[str, Any]:
    """One markdown table as the JSON holds it (rows named by their key columns)."""
    columns, rows = _md_table(body)
    width = KEY_COLUMNS.get(key, 1)
    parsed: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for row in rows:
        assert len(row) == len(columns), row
        name = " | ".join(row[:width])
        parsed[name] = {}
        for column, raw in zip(columns[width:], row[width:], strict=True):
            value, note = _cell(raw)
            parsed[name][column] = value
            if note:
                notes[f"{name} | {column}"] = note
    return {"columns": columns, "key_columns": width, "rows": parsed, "notes": notes}


def _bullets(body: str) -> list[str]:
    """``- `` items with their continuation lines joined by one space."""
    items: list[str] = []
    for line in body.splitlines():
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return items


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in NUMBER.findall(text)]


@pytest.fixture(scope="module")
def paper() -> dict[str, Any]:
    return json.loads(JSON_PATH.read_text())


@pytest.fixture(scope="module")
def sections() -> dict[str, tuple[str, str]]:
    if not NUMBERS_MD.is_file():
        pytest.skip(f"{NUMBERS_MD} is absent (the shared transcription of the paper)")
    return _sections(NUMBERS_MD.read_text())


def test_the_json_holds_every_table_of_the_paper(paper):
    assert sorted(paper["tables"], key=lambda k: int(k[5:])) == [f"table{n}" for n in range(3, 13)]
    for key, table in paper["tables"].items():
        width = table["key_columns"]
        for name, cells in table["rows"].items():
            assert len(name.split(" | ")) == width, (key, name)
            assert list(cells) == table["columns"][width:], (key, name)
            assert all(v is None or isinstance(v, int | float | str) for v in cells.values())
    assert {"fig7", "fig9"} <= set(paper["figures"])


def test_every_table_agrees_with_numbers_md(paper, sections):
    tables = {k: v for k, v in sections.items() if k.startswith("table")}
    assert sorted(tables) == sorted(paper["tables"])
    for key, (caption, body) in tables.items():
        ours = paper["tables"][key]
        assert ours["caption"] == caption, key
        expected = parse_table(key, body)
        assert ours["columns"] == expected["columns"], key
        assert list(ours["rows"]) == list(expected["rows"]), key
        for name, cells in expected["rows"].items():
            assert ours["rows"][name] == cells, (key, name)
        assert ours.get("notes", {}) == expected["notes"], key


def test_the_text_beside_the_tables_agrees_with_numbers_md(paper, sections):
    # Table 12's DeepObfuscator line and the split indices the transcription infers
    body = sections["table12"][1]
    deep = paper["tables"]["table12"]["deepobfuscator"]
    line = next(x for x in body.splitlines() if x.startswith("DeepObfuscator"))
    assert deep["model"] in line
    numbers = [deep["producer (MB)"], deep["consumer (MB)"], deep["universal → gender"]]
    assert _numbers(line.replace("VGG-16", "")) == numbers
    guess = paper["tables"]["table12"]["likely_split_index"]
    assert f"split {guess['3.00']}, {guess['11.97']} and {guess['47.9']}" in body
    # Fig. 9 (text only) and Fig. 7 (no numbers)
    fig9 = paper["figures"]["fig9"]
    assert fig9["caption"] == sections["fig9"][0]
    assert fig9["text"] == _bullets(sections["fig9"][1])
    found = _numbers(" ".join(fig9["text"]))
    points = fig9["gender_points_below_deepobfuscator"]
    assert found == [
        *fig9["smile (%)"],
        *fig9["cheekbones (%)"],
        *points["smile"],
        *points["cheekbones"],
    ]
    assert paper["figures"]["fig7"]["caption"] == sections["fig7"][0]


def test_the_setup_agrees_with_numbers_md(paper, sections):
    setup = paper["setup"]
    text = _bullets(sections["setup"][1])
    assert setup["text"] == text
    celeba = next(x for x in text if x.startswith("CelebA"))
    statefarm = next(x for x in text if x.startswith("StateFarm"))
    for line, values in ((celeba, setup["celeba"]), (statefarm, setup["statefarm"])):
        assert f"{values['epochs']} epochs" in line
        assert f"ε = {values['epsilon']:g}" in line
        assert f"δ = {values['delta']:.0e}".replace("e-0", "e-") in line
        train, test = values["train_images"], values["test_images"]
        assert f"{train:,} train / {test:,} test" in line or (
            f"{train // 1000}k train / {test // 1000}k test" in line
        )
    size = setup["celeba"]["image_size"]
    assert f"{size}×{size}" in celeba
