"""Sweeps: the right config per point, finished points reused, a table and a plot."""

from __future__ import annotations

import json
import math

import pytest

from metamorphosis.audit.budget import budget_named
from metamorphosis.audit.sweeps import check_sweeps, point_config, run_sweeps
from metamorphosis.config import config_from_dict
from metamorphosis.errors import ConfigError
from tiny import tiny_config_dict


def test_point_config_sets_the_swept_key():
    config = config_from_dict(tiny_config_dict("both"))
    finite = point_config(config, "epsilon", 2.0, "cpu")
    assert finite.privacy.mode == "both"
    assert finite.privacy.target_epsilon == 2.0 and finite.privacy.noise_multiplier is None
    assert point_config(config, "epsilon", math.inf, "cpu").privacy.mode == "task"
    universal = config_from_dict(tiny_config_dict("none"))
    assert point_config(universal, "epsilon", math.inf, "cpu").privacy.mode == "none"
    assert point_config(universal, "epsilon", 1.0, "cpu").privacy.mode == "input"
    assert point_config(config, "split", 4, "cpu").model.split_index == 4
    with pytest.raises(ConfigError, match="split index 4.5"):
        point_config(config, "split", 4.5, "cpu")


def test_unknown_sweeps_and_empty_values_are_refused():
    with pytest.raises(ConfigError, match="sweep 'lr' is unknown"):
        check_sweeps(["lr"], {})
    with pytest.raises(ConfigError, match="no values"):
        check_sweeps(["epsilon"], {"epsilon": []})


def test_epsilon_sweep_trains_each_point_once_and_tabulates_it(tiny_run, tmp_path):
    config = config_from_dict(json.loads((tiny_run / "run.json").read_text())["config"])
    options = {
        "values": {"epsilon": [4.0, math.inf]},
        "data_root": None,
        "budget": budget_named("quick"),
        "device": "cpu",
        "seed": 0,
        "progress": False,
        "out_dir": tmp_path,
    }
    section = run_sweeps(tiny_run, config, ["epsilon"], **options)["epsilon"]
    finite, infinite = section["points"]
    assert finite["epsilon"] == pytest.approx(4.0, rel=0.02)  # calibrated to the target
    assert infinite["value"] is None and infinite["epsilon"] is None
    assert set(finite["leakage"]) == {"background"} and set(finite["utility"]) == {"shape", "large"}
    assert [row[0] for row in section["rows"]] == ["4", "∞"]
    assert (tmp_path / section["figure"]).read_bytes().startswith(b"\x89PNG")
    point_run = tiny_run / "audit" / "sweeps" / "epsilon_4" / "run.json"
    written = point_run.stat().st_mtime_ns
    again = run_sweeps(tiny_run, config, ["epsilon"], **options)["epsilon"]
    assert point_run.stat().st_mtime_ns == written  # reused, not retrained
    assert again["rows"] == section["rows"]  # and the attacks are seeded


def test_a_stale_sweep_point_is_refused(tiny_run, tmp_path):
    record = json.loads((tiny_run / "run.json").read_text())
    config = config_from_dict(record["config"])
    point = tiny_run / "audit" / "sweeps" / "split_4"
    point.mkdir(parents=True, exist_ok=True)
    (point / "run.json").write_text(json.dumps(record))  # split 5's run under split 4's name
    with pytest.raises(ConfigError, match="another config"):
        run_sweeps(
            tiny_run,
            config,
            ["split"],
            values={"split": [4]},
            data_root=None,
            budget=budget_named("quick"),
            device="cpu",
            seed=0,
            progress=False,
            out_dir=tmp_path,
        )


def test_audit_with_a_sweep_adds_its_section_to_the_report(tiny_run, tmp_path):
    import shutil

    from metamorphosis.audit.run import run_audit

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("audit"))
    report = run_audit(
        copy,
        budget="quick",
        device="cpu",
        sweeps=["split"],
        sweep_values={"split": [6]},
        progress=False,
    )
    point = report["sweeps"]["split"]["points"][0]
    assert point["feature_shape"] != report["run"]["feature_shapes"]["shape"]  # split 6 ≠ 5
    markdown = (copy / "audit" / "report.md").read_text()
    assert "## Sweep: split" in markdown and "](sweep_split.png)" in markdown
    assert (copy / "audit" / "sweep_split.png").is_file()
