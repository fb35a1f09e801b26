"""benchmarks/frontier.py: the Pareto front, the point table, recording and rendering.

Training and auditing are replaced by fakes (``frontier.train`` / ``frontier.audit``) that
write a ``run.json`` and an ``audit/report.json`` with fixed numbers, so these tests train
nothing, except ``test_end_to_end_tiny_point_trains_and_audits_for_real`` (marked slow).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from metamorphosis.config import apply_overrides, config_to_dict
from metamorphosis.train.methods import resolve_method
from scripts import load_script
from tiny import tiny_config_dict


@pytest.fixture(scope="module")
def frontier():
    return load_script("frontier")


# --- the Pareto front -----------------------------------------------------------------------


def test_pareto_front_drops_dominated_points_and_keeps_ties(frontier):
    points = {
        "a": (0.5, 0.9),  # front: least cost at top gain
        "b": (0.6, 0.9),  # dominated by a: more cost, same gain
        "c": (0.7, 0.95),  # front: the most gain
        "d": (0.4, 0.7),  # front: least cost
        "e": (0.5, 0.8),  # dominated by a: same cost, less gain
        "f": (0.7, 0.95),  # ties with c: neither dominates the other, both on the front
        "g": (0.65, 0.85),  # dominated by a
    }
    assert frontier.pareto_front(points) == ["d", "a", "c", "f"]  # by cost, then gain, then id


def test_pareto_front_leaves_out_unmeasured_points(frontier):
    points = {"a": (0.5, 0.9), "none": (None, 0.99), "nan": (0.1, math.nan), "b": (0.3, 0.6)}
    assert frontier.pareto_front(points) == ["b", "a"]  # the unmeasured dominate nothing
    assert frontier.pareto_front({}) == []
    assert frontier.pareto_front({"only": (1.0, 0.0)}) == ["only"]


def test_the_front_reads_lower_is_better_utility_as_negated(frontier):
    points = {
        "low_err": {"leakage": 0.5, "utility": 0.1, "utility_higher_is_better": False},
        "high_err": {"leakage": 0.5, "utility": 0.3, "utility_higher_is_better": False},
    }
    assert frontier.pareto_front(frontier._coordinates(points, "leakage")) == ["low_err"]


# --- the point table and its configs ------------------------------------------------------


def test_each_method_sweeps_at_least_four_values_and_ids_are_unique(frontier):
    ids = [p.id for p in frontier.POINTS]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    sweeps = Counter(p.method for p in frontier.POINTS if not p.reference)
    assert all(n >= 4 for n in sweeps.values()), sweeps
    for method in ("metamorphosis", "deepobfuscator", "censor", "bottleneck", "noise", "nopeek"):
        assert sweeps[method] >= 4, method
    assert sweeps["erase"] >= 4
    references = {p.id: p.overrides for p in frontier.POINTS if p.reference}
    assert references["universal"]["privacy.mode"] == "none"
    assert references["universal-dp_epsilon_4"]["privacy.target_epsilon"] == 4.0
    assert all(p.id.startswith(p.method) for p in frontier.POINTS)  # ids name their method


def _dotted(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("budget", ["quick", "full"])
@pytest.mark.parametrize("dataset", ["celeba", "statefarm", "demo"])
def test_every_point_gives_a_valid_config_for_every_dataset(frontier, dataset, budget):
    """Built with config_from_dict (through load_config) and its method resolved: a bad
    key or a method / privacy-mode clash fails here, without training."""
    data = frontier.DATASETS[dataset]
    for point in frontier.POINTS:
        config = frontier.point_config(point, data, budget, "cpu")
        resolve_method(config)
        raw = config_to_dict(config)
        for key, value in point.overrides.items():
            assert _dotted(raw, key) == value, (dataset, point.id, key)  # the key took effect
        assert [t.name for t in config.tasks][0] == data.public
        assert [s.name for s in config.private_attributes] == [data.private]
        if budget == "quick" and dataset != "demo":  # the paper tables' CPU reduction
            assert config.data.image_size == (32, 32) and config.data.max_train == 4000
    celeba = frontier.point_config(frontier.POINTS[0], frontier.DATASETS["celeba"], budget)
    assert [t.name for t in celeba.tasks] == ["smile"]  # one public task, as the issue says


def test_overrides_are_written_as_yaml_the_set_helper_reads_back(frontier):
    overrides = {
        "privacy.omega": 1e-05,  # str() gives '1e-05', which YAML reads as a string
        "defence.erase": "linear",
        "defence.bottleneck_channels": 8,
        "censor.tasks": True,
        "data.image_size": [48, 64],
        "privacy.target_epsilon": None,
    }
    raw = apply_overrides({}, frontier.override_strings(overrides))
    for key, value in overrides.items():
        assert _dotted(raw, key) == value


# --- recording ----------------------------------------------------------------------------


class Fakes:
    """``train`` and ``audit`` stand-ins that write the files the harness reads."""

    def __init__(self, public: str, private: str) -> None:
        self.public, self.private = public, private
        self.trained: list[Path] = []
        self.audited: list[Path] = []

    def train(self, config, run_dir, data_root, progress) -> None:
        self.trained.append(run_dir)
        run_dir.mkdir(parents=True)
        record = {
            "config": config_to_dict(config),
            "metrics": {  # the other public tasks (the demo's count) 0.1 below
                task.name: {"accuracy": 0.8 + 0.01 * config.train.seed - 0.1 * i}
                for i, task in enumerate(config.tasks)
            },
            "privacy": {"epsilon": 4.0 if config.privacy.uses_dp else None},
            "train_seconds": 12.5,
        }
        (run_dir / "run.json").write_text(json.dumps(record))

    def audit(self, run_dir, data_root, budget, device, progress) -> None:
        self.audited.append(run_dir)
        config = json.loads((run_dir / "run.json").read_text())["config"]
        seed = config["train"]["seed"]
        others = [t["name"] for t in config["tasks"] if t["name"] != self.public]
        entry = {
            "source": self.public,
            "label": self.private,
            "metric": "accuracy",
            "higher_is_better": True,
            "best": {"attacker": "mlp", "value": 0.7 + 0.02 * seed},
            "attackers": {"mlp": 0.7 + 0.02 * seed, "knn": 0.6},
            "majority": 0.55,
            "label_floor": 0.6,
            "universal": 0.9,
        }
        report = {
            "budget": {"name": budget.name},
            "data": {"test_items": 100},
            "leakage": [
                {**entry, "source": "encoder", "label_floor": None},
                entry,
                *(
                    {**entry, "source": task, "best": {"attacker": "knn", "value": 0.6}}
                    for task in others
                ),
            ],
            "reconstruction": {
                "scores": {self.public: {"psnr": 14.0}, "encoder": {"psnr": 18.0}},
                "baseline": {"psnr": 11.0},
            },
        }
        (run_dir / "audit").mkdir()
        (run_dir / "audit" / "report.json").write_text(json.dumps(report))


@pytest.fixture
def fakes(frontier, monkeypatch):
    demo = frontier.DATASETS["demo"]
    fake = Fakes(demo.public, demo.private)
    monkeypatch.setattr(frontier, "train", fake.train)
    monkeypatch.setattr(frontier, "audit", fake.audit)
    return fake


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "demo",
        "--results",
        str(tmp_path / "results"),
        "--runs",
        str(tmp_path / "runs"),
        *extra,
    ]


def test_recording_skips_a_recorded_point_and_rerecords_changed_overrides(
    frontier, fakes, tmp_path, monkeypatch, capsys
):
    point = next(p for p in frontier.POINTS if p.id == "censor_weight_10")
    frontier.main(_args(tmp_path, "--point", point.id, "--quiet"))
    saved = json.loads((tmp_path / "results" / "demo" / "frontier.json").read_text())
    record = saved["points"][point.id]
    assert (record["utility"], record["leakage"], record["leakage_attacker"]) == (0.8, 0.7, "mlp")
    assert (record["majority"], record["label_floor"], record["universal"]) == (0.55, 0.6, 0.9)
    assert (record["psnr"], record["psnr_baseline"], record["psnr_universal"]) == (14, 11, 18)
    assert (record["epsilon"], record["train_seconds"], record["budget"]) == (4.0, 12.5, "quick")
    assert record["overrides"] == point.overrides and record["audit_budget"] == "tables-cpu"
    assert "--point censor_weight_10" in record["command"]
    assert record["tasks"] == {  # every public task's release, not only the plotted one
        "colour": {"utility": 0.8, "leakage": 0.7, "leakage_attacker": "mlp"},
        "count": {"utility": pytest.approx(0.7), "leakage": 0.6, "leakage_attacker": "knn"},
    }
    assert len(fakes.trained) == len(fakes.audited) == 1
    assert "[1/1] censor weight=10: training" in capsys.readouterr().err

    frontier.main(_args(tmp_path, "--point", point.id, "--quiet"))  # recorded: nothing runs
    assert len(fakes.trained) == len(fakes.audited) == 1
    assert "recorded already (budget quick), skipped" in capsys.readouterr().err

    changed = frontier.Point(
        point.method, point.knob, point.value, {**point.overrides, "censor.adversaries": 5}
    )
    others = [p for p in frontier.POINTS if p.id != point.id]
    monkeypatch.setattr(frontier, "POINTS", (*others, changed))
    frontier.main(_args(tmp_path, "--point", point.id, "--quiet"))
    assert len(fakes.trained) == 2  # retrained: the old run dir had another config
    run_dir = tmp_path / "runs" / "demo" / "quick" / point.id
    assert (run_dir.parent / f"{point.id}.stale1" / "run.json").exists()  # set aside, not lost
    saved = json.loads((tmp_path / "results" / "demo" / "frontier.json").read_text())
    assert saved["points"][point.id]["overrides"]["censor.adversaries"] == 5
    for name in ("frontier_leakage.png", "frontier_psnr.png", "frontier.md"):
        assert (tmp_path / "results" / "demo" / name).stat().st_size > 0


def test_a_trained_run_is_audited_not_retrained(frontier, fakes, tmp_path):
    """A session killed between training and recording resumes at the audit."""
    point = next(p for p in frontier.POINTS if p.id == "universal")
    data = frontier.DATASETS["demo"]
    run_dir = tmp_path / "runs" / "demo" / "quick" / point.id
    fakes.train(frontier.point_config(point, data, "quick"), run_dir, None, False)
    frontier.main(_args(tmp_path, "--point", point.id, "--quiet"))
    assert fakes.trained == [run_dir] and fakes.audited == [run_dir]


def test_seeds_record_mean_and_sd_under_the_point(frontier, fakes, tmp_path):
    point = "nopeek_weight_1"
    frontier.main(_args(tmp_path, "--point", point, "--seeds", "3", "--quiet"))
    saved = json.loads((tmp_path / "results" / "demo" / "frontier.json").read_text())
    seeds = saved["points"][point]["seeds"]
    assert seeds["seeds"] == [0, 1, 2] and sorted(seeds["runs"]) == ["0", "1", "2"]
    assert seeds["mean"]["utility"] == pytest.approx(0.81)  # 0.80, 0.81, 0.82
    assert seeds["sd"]["utility"] == pytest.approx(0.01)
    assert seeds["mean"]["leakage"] == pytest.approx(0.72)
    assert seeds["sd"]["psnr"] == 0.0
    names = sorted(p.name for p in fakes.trained)
    assert names == [point, f"{point}_seed1", f"{point}_seed2"]  # seed 0 is the point itself
    frontier.main(_args(tmp_path, "--point", point, "--seeds", "3", "--quiet"))
    assert len(fakes.trained) == 3  # every seed recorded: nothing reruns
    markdown = (tmp_path / "results" / "demo" / "frontier.md").read_text()
    assert "| `nopeek_weight_1` | 0, 1, 2 | 81.0 ± 1.0 | 72.0 ± 2.0 | 14.0 ± 0.0 |" in markdown


def test_seeds_need_exactly_one_point(frontier, fakes, tmp_path):
    with pytest.raises(SystemExit):
        frontier.main(_args(tmp_path, "--seeds", "3"))
    assert fakes.trained == []


# --- rendering and errors -----------------------------------------------------------------


def _hand_written(frontier) -> dict:
    def point(method, knob, value, utility, leakage, psnr, **extra):
        return {
            "method": method,
            "method_label": frontier.METHOD_LABELS.get(method, method),
            "knob": knob,
            "value": value,
            "reference": extra.pop("reference", False),
            "overrides": {},
            "budget": "quick",
            "command": f"python benchmarks/frontier.py celeba --point {method}_{value}",
            "utility": utility,
            "utility_metric": "accuracy",
            "utility_higher_is_better": True,
            "leakage": leakage,
            "leakage_attacker": "mlp",
            "majority": 0.58,
            "label_floor": 0.62,
            "psnr": psnr,
            "psnr_baseline": 11.0,
            "epsilon": extra.pop("epsilon", None),
            "train_seconds": 30.0,
            **extra,
        }

    return {
        "dataset": "celeba",
        "public": "smile",
        "private": "gender",
        "points": {
            "universal": point("universal", "dp", "none", 0.9, 0.85, 20.0, reference=True),
            "metamorphosis_omega_0.001": point("metamorphosis", "omega", 0.001, 0.85, 0.7, 15.0),
            "metamorphosis_omega_0.1": point("metamorphosis", "omega", 0.1, 0.8, 0.75, 16.0),
            "censor_weight_10": point("censor", "weight", 10, 0.84, 0.64, None, epsilon=4.0),
            "noise_sigma_2": point("noise", "sigma", 2, 0.6, 0.6, 12.0),
        },
    }


def test_render_only_draws_both_figures_and_the_table_from_frontier_json(
    frontier, tmp_path, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("--render-only trained")

    monkeypatch.setattr(frontier, "train", no_training)
    monkeypatch.setattr(frontier, "audit", no_training)
    out = tmp_path / "results" / "celeba"
    out.mkdir(parents=True)
    (out / "frontier.json").write_text(json.dumps(_hand_written(frontier)))
    frontier.main(["celeba", "--render-only", "--results", str(tmp_path / "results")])
    for name in ("frontier_leakage.png", "frontier_psnr.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / name).stat().st_size > 10_000
    markdown = (out / "frontier.md").read_text()
    rows = {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| ")}
    assert "| 90.0 | 85.0 (mlp) | 20.0 |" in rows["dp=none"]
    assert "**yes** / **yes**" in rows["dp=none"]  # the most utility: on both fronts
    assert "| **yes** / no |" in rows["weight=10"]  # no PSNR measured: on no PSNR front
    assert "| no / no |" in rows["omega=0.1"]  # dominated by ω = 0.001 on both
    assert "| 4.00 |" in rows["weight=10"]
    assert "`python benchmarks/frontier.py celeba --point censor_10`" in rows["weight=10"]
    assert "majority rate 58.0 %, label floor" in markdown


def test_render_only_without_frontier_json_says_what_to_run(frontier, tmp_path):
    with pytest.raises(SystemExit, match="frontier.json is missing: run `frontier.py celeba`"):
        frontier.main(["celeba", "--render-only", "--results", str(tmp_path)])


def test_missing_data_root_names_the_path_and_the_option(frontier, fakes, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as error:
        frontier.main(["celeba", "--data-root", str(missing), "--results", str(tmp_path / "r")])
    message = str(error.value)
    assert str(missing / "celeba") in message and "--data-root" in message
    assert fakes.trained == [] and not (tmp_path / "r").exists()


# --- one real point, end to end ------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_tiny_point_trains_and_audits_for_real(frontier, tmp_path, monkeypatch):
    """REAL training and audit (about 10–20 s on 2 CPU cores): a tiny generated-scene config
    through the harness, so the report keys it reads are the audit's own."""
    from metamorphosis.audit.budget import BUDGETS

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict("task", epochs=1)))
    tiny = frontier.Dataset("tiny", config, "shape", "background", None)
    point = frontier.Point("metamorphosis", "omega", 0.1, {"privacy.omega": 0.1})
    monkeypatch.setitem(frontier.DATASETS, "tiny", tiny)
    monkeypatch.setattr(frontier, "POINTS", (point,))
    monkeypatch.setattr(frontier, "attack_budget", lambda budget: BUDGETS["quick"])
    args = ["tiny", "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs")]
    frontier.main([*args, "--quiet"])
    saved = json.loads((tmp_path / "results" / "tiny" / "frontier.json").read_text())
    record = saved["points"][point.id]
    for key in ("utility", "leakage", "majority", "label_floor", "universal", "psnr"):
        assert isinstance(record[key], float), key
    assert record["psnr_baseline"] is not None and record["train_seconds"] > 0
    assert record["leakage_attacker"] in record["attackers"]
    assert record["epsilon"] is None and record["audit_budget"] == "quick"
