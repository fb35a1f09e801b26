"""docs/RESULTS.md is generated: it must match what its generator makes of docs/results/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _page() -> str:
    sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports paper_numbers beside it
    try:
        spec = importlib.util.spec_from_file_location(
            "results_page", REPO / "benchmarks" / "results_page.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.page()
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_results_page_is_up_to_date_with_the_kept_reports():
    expected = _page()
    assert (REPO / "docs" / "RESULTS.md").read_text() == expected, (
        "docs/RESULTS.md is stale: run python benchmarks/results_page.py"
    )


def test_the_page_quotes_the_paper_only_on_marked_rows():
    """The paper's tables are transcribed (benchmarks/paper_numbers.json): quoted, and marked."""
    page = _page()
    assert "not available" not in page
    marked = [line for line in page.splitlines() if "*paper:*" in line]
    # Tables 3-12 and Fig. 9 each appear on a marked row or line
    for source in [f"Table {n}" for n in range(3, 13)] + ["Fig. 9"]:
        assert any(source in line for line in marked), source
    # the old unmarked "paper, ..." rows are gone
    assert not any(line.startswith("| paper") for line in page.splitlines())


def test_the_frontier_section_links_figures_that_exist():
    """Each dataset's frontier table is on the page with its two figures, linked from docs/."""
    page = _page()
    for name in ("celeba", "statefarm", "demo"):
        if not (REPO / "results" / "frontier" / name / "frontier.md").is_file():
            continue
        assert f"### Privacy–utility frontier: {name} " in page
        for figure in ("frontier_leakage.png", "frontier_psnr.png"):
            link = f"../results/frontier/{name}/{figure}"
            assert f"]({link})" in page and (REPO / "docs" / link).resolve().is_file(), link
