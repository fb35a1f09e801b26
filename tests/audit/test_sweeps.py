"""Sweeps: the right config per point, finished points reused, a table and a plot."""

from __future__ import annotations

import json
import math
import re

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
        check_sweeps(["lr"], {"lr": [1]})
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


def test_a_sweep_over_any_config_key_is_parsed_as_set_values():
    from metamorphosis.audit.sweeps import Sweep

    omega, method = check_sweeps(["privacy.omega=0.001, 1e-2", "method=universal,kd-mtl"], {})
    assert omega == Sweep("privacy.omega", (0.001, 0.01)) and not omega.preset
    assert method.values == ("universal", "kd-mtl")
    (epsilon,) = check_sweeps(["epsilon=1,inf"], {})
    assert epsilon.preset and epsilon.values == (1.0, math.inf)
    (split,) = check_sweeps(["split"], {})
    assert split.values == (5, 7, 8)  # the preset's defaults
    config = config_from_dict(tiny_config_dict("both"))
    assert point_config(config, "privacy.omega", 0.01, "cpu").privacy.omega == 0.01
    assert point_config(config, "tasks.0.weight", 2, "cpu").tasks[0].weight == 2


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["lr"], "sweep 'lr' is unknown: expected one of ['epsilon', 'split'] or KEY=V1"),
        (["train.lr="], "expected KEY=V1,V2,... with values"),
        (["epsilon=a,b"], "epsilon values must be numbers"),
        (["epsilon=0"], "sweep 'epsilon' value 0 is invalid"),
        (["privacy.omega=1", "privacy.omega=2"], "'privacy.omega' is asked for twice"),
    ],
)
def test_bad_sweeps_are_refused_in_one_line(names, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_sweeps(names, {})


def test_every_point_of_a_generic_sweep_is_checked_before_training():
    from metamorphosis.audit.sweeps import check_points

    config = config_from_dict(tiny_config_dict("both"))
    with pytest.raises(ConfigError, match=r"sweep 'privacy.omega' value -1: privacy.omega=-1"):
        check_points(config, ["privacy.omega=0.01,-1"], {})
    with pytest.raises(ConfigError, match="sweep 'method' value kd-mtl: .*one shared feature"):
        check_points(config, ["method=metamorphosis,kd-mtl"], {})  # mode both: not kd-mtl
    with pytest.raises(ConfigError, match="sweep 'train.lrr' value 1: unknown key"):
        check_points(config, ["train.lrr=1"], {})


def test_a_generic_sweep_trains_each_value_and_names_its_points(tiny_run, tmp_path):
    config = config_from_dict(json.loads((tiny_run / "run.json").read_text())["config"])
    section = run_sweeps(
        tiny_run,
        config,
        ["privacy.omega=0,0.5"],
        values={},
        data_root=None,
        budget=budget_named("quick"),
        device="cpu",
        seed=0,
        progress=False,
        out_dir=tmp_path,
    )["privacy.omega"]
    assert [p["value"] for p in section["points"]] == [0, 0.5]
    assert section["header"][0] == "privacy.omega" and [r[0] for r in section["rows"]] == [
        "0",
        "0.5",
    ]
    for value in ("0", "0.5"):
        record = json.loads(
            (tiny_run / "audit" / "sweeps" / f"privacy.omega_{value}" / "run.json").read_text()
        )
        assert record["config"]["privacy"]["omega"] == float(value)
    assert (tmp_path / "sweep_privacy.omega.png").read_bytes().startswith(b"\x89PNG")
