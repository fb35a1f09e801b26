"""benchmarks/paper_tables.py: every run resolves, and tables show what the audits measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from metamorphosis.audit.run import run_audit
from metamorphosis.config import config_from_dict
from metamorphosis.experiment import train_run
from scripts import load_script
from tiny import tiny_config_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tables():
    return load_script("paper_tables")


@pytest.mark.parametrize("budget", ["quick", "full"])
def test_every_run_of_every_table_is_a_valid_config(tables, budget):
    methods = {"KD-MTL": "kd-mtl", "universal": "universal"}
    for table in tables.TABLES.values():
        for label, run in table.rows.items():
            config = tables._resolved(run, budget, "cpu")
            names = {s.name for s in config.all_labels}
            assert set(table.public) <= names or run.added_task, (table.key, label)
            if "DeepObfuscator" in label:
                assert config.method == "deepobfuscator"
            if label in methods:
                assert config.method == methods[label]
            if budget == "quick" and run.dataset in ("celeba", "statefarm"):
                assert config.data.max_train == 4000 and config.data.image_size == (32, 32)


def test_shared_runs_are_the_same_config(tables):
    """ω = 0.001 in Table 8 is the Cross-SEC row of Table 11 and split 5 of Table 12."""
    rows = tables.TABLES
    shared = rows["table8"].rows["MetaMorphosis ω=0.001"]
    assert rows["table11"].rows["Cross-SEC"] is shared
    assert rows["table12"].rows["split 5"] is shared
    config = tables._resolved(shared, "quick", "cpu")
    assert (config.model.module, config.model.split_index) == ("cross-sec", 5)
    sec = tables._resolved(rows["table11"].rows["SEC"], "quick", "cpu")
    assert sec.model.module == "sec" and sec.privacy.omega == config.privacy.omega


def test_a_table_shows_the_audited_numbers(tables, tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    rows = {}
    for label, method in (("MetaMorphosis", "metamorphosis"), ("universal", "universal")):
        raw = tiny_config_dict("task" if method == "metamorphosis" else "none", epochs=1)
        raw["method"] = method
        run_dir = tmp_path / "runs" / "quick" / method
        train_run(config_from_dict(raw), run_dir, progress=False)
        run_audit(run_dir, budget="quick", device="cpu", progress=False)
        rows[label] = tables.Run(method, "unused.yaml", "synthetic")
    table = tables.Table(
        "tiny",
        "tiny table",
        rows,
        "privacy",
        public=("shape", "large"),
        private=("background",),
        paper=(tables.PaperRow("MetaMorphosis (Table 0)", {"shape": "50.00"}),),
        paper_notes=("*paper:* a cell with no column here.",),
    )
    text = tables.render(table, "quick", 1.0).read_text()
    report_path = tmp_path / "runs/quick/metamorphosis/audit/report.json"
    report = json.loads(report_path.read_text())
    kept = report["swap"]["kept_heads"]["matrix"]["shape"]["background"]
    retrained = report["swap"]["retrained"]["matrix"]["shape"]["background"]
    floor = next(
        r["label_floor"]
        for r in report["attribute_inference"]
        if (r["source"], r["attribute"]) == ("shape", "background")
    )
    row = next(x for x in text.splitlines() if x.startswith("| MetaMorphosis |"))
    cell = f"{100 * kept:.1f} / {100 * retrained:.1f} / "
    assert cell in row and row.count(" / ") == 3 * 4  # kept / retrained / best / floor in 4 cells
    assert f" / {100 * floor:.1f} |" in row  # the label floor (attribute_inference)
    # the paper's figure beside ours, on its own marked row; the paper reports the kept head only
    paper = next(x for x in text.splitlines() if x.startswith("| *paper:* MetaMorphosis"))
    assert paper.split(" | ")[2] == "50.00" and "| — / — / — / — |" in paper
    assert "*paper:* a cell with no column here." in text
    saved = json.loads((tmp_path / "results" / "tiny" / "table.json").read_text())
    assert saved["numbers"]["universal"]["epsilon"] is None
    assert saved["paper"] == [{"label": "MetaMorphosis (Table 0)", "cells": {"shape": "50.00"}}]
    assert (tmp_path / "results" / "tiny" / "figure.png").stat().st_size > 1000

    # a report with the audit's `leakage` list: the best attacker, named, and its label floor
    report["leakage"] = [
        {
            "source": "shape",
            "label": "background",
            "best": {"attacker": "mlp", "value": 0.875},
            "attackers": {"head": retrained, "mlp": 0.875, "linear": 0.5, "knn": 0.6},
            "majority": 0.5,
            "label_floor": 0.625,
            "universal": 0.9,
        }
    ]
    report_path.write_text(json.dumps(report))
    text = tables.render(table, "quick", 1.0).read_text()
    row = next(x for x in text.splitlines() if x.startswith("| MetaMorphosis |"))
    assert f"{100 * kept:.1f} / {100 * retrained:.1f} / **87.5** (mlp) / 62.5 |" in row
    saved = json.loads((tmp_path / "results" / "tiny" / "table.json").read_text())
    assert saved["numbers"]["MetaMorphosis"]["best"]["shape→background"]["attacker"] == "mlp"


def test_render_only_reads_kept_numbers_without_run_dirs(tables, tmp_path, monkeypatch):
    """``--render-only`` re-renders every committed table from its table.json (numbers from
    before the audit named its best attacker included: those slots read —) and gives the
    committed table.md: the committed tables are up to date with the harness and the paper."""
    monkeypatch.setattr(tables, "RUNS", tmp_path / "no-runs")
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    for key in tables.TABLES:
        committed = REPO / "results" / key
        if not (committed / "table.json").is_file():
            continue
        (tmp_path / "results" / key).mkdir(parents=True)
        for name in ("table.json", "figure.png"):
            shutil.copy(committed / name, tmp_path / "results" / key / name)
        figure = (tmp_path / "results" / key / "figure.png").read_bytes()
        tables.main([key, "--render-only"])
        out = tmp_path / "results" / key
        assert (out / "table.md").read_text() == (committed / "table.md").read_text(), (
            f"results/{key}/table.md is stale: run python benchmarks/paper_tables.py --render-only"
        )
        assert (out / "figure.png").read_bytes() == figure  # the figure is kept as it is
        before = json.loads((committed / "table.json").read_text())["numbers"]
        assert json.loads((out / "table.json").read_text())["numbers"] == before


def test_every_table_sets_the_paper_beside_ours(tables):
    """Each table quotes the paper (rows in our columns, or its table whole) from the JSON."""
    for table in tables.TABLES.values():
        assert table.paper or table.paper_notes, table.key
        for row in table.paper:
            assert row.cells, (table.key, row.label)
            assert "Table" in row.label or "Fig." in row.label, (table.key, row.label)
        if table.paper:
            assert "*paper:*" in table.paper_source, table.key


def test_the_add_task_table_sets_the_added_module_against_retraining(tables, tmp_path, monkeypatch):
    from metamorphosis.config import LabelSpec
    from metamorphosis.experiment import add_task

    monkeypatch.setattr(tables, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    runs = tmp_path / "runs" / "quick"
    base = tiny_config_dict("task", epochs=1)
    base["tasks"] = base["tasks"][:1]  # 'shape' public, 'background' private
    train_run(config_from_dict(base), runs / "base", progress=False)
    add_task(
        runs / "base", LabelSpec("large", "large", "binary"), out=runs / "added", progress=False
    )
    train_run(config_from_dict(tiny_config_dict("task", epochs=1)), runs / "all", progress=False)
    for name in ("added", "all"):
        run_audit(runs / name, budget="quick", device="cpu", progress=False)
    table = tables.Table(
        "tiny_add",
        "tiny add-task table",
        {
            "add-task": tables.Run("added", "unused.yaml", "synthetic", added_task={}),
            "retrain": tables.Run("all", "unused.yaml", "synthetic"),
        },
        "add_task",
        public=("shape", "large"),
        private=("background",),
    )
    text = tables.render(table, "quick").read_text()
    added = json.loads((runs / "added" / "run.json").read_text())["added_tasks"][-1]
    retrain_seconds = json.loads((runs / "all" / "run.json").read_text())["train_seconds"]
    row = next(x for x in text.splitlines() if x.startswith("| add-task |"))
    assert row.split(" | ")[1] == f"{added['seconds']:.0f}"  # the add-task step, not the base
    report = json.loads((runs / "added" / "audit" / "report.json").read_text())
    assert f"{report['similarity']['ssim']['large|background']:.3f}" in row
    assert f"{retrain_seconds / added['seconds']:.1f}× that to retrain" in text
