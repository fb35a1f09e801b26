"""docs/RESULTS.md is generated: it must match what its generator makes of docs/results/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_results_page_is_up_to_date_with_the_kept_reports():
    spec = importlib.util.spec_from_file_location(
        "results_page", REPO / "benchmarks" / "results_page.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.page()
    assert (REPO / "docs" / "RESULTS.md").read_text() == expected, (
        "docs/RESULTS.md is stale: run python benchmarks/results_page.py"
    )
