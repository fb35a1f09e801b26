"""Every bad input to train, demo, add-task and audit is one clear line and exit code 2.

Config values (NaN, ±inf, bools, lists, huge numbers, odd ``--set`` keys), config
files, ``--out`` paths, run dirs damaged in every way a reader relies on (run.json
shape and agreement with the weights, truncated safetensors) and the audit's and
add-task's flags. Nothing here trains more than the one tiny run the run-dir
cases copy.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from metamorphosis import load_producer
from metamorphosis.audit import report as report_module
from metamorphosis.audit.document import Document
from metamorphosis.audit.sweeps import check_sweeps, point_config
from metamorphosis.cli import app
from metamorphosis.config import config_from_dict
from metamorphosis.errors import ConfigError, RunDirError
from metamorphosis.experiment import train_run
from metamorphosis.rundir import json_safe, load_heads
from tiny import tiny_config_dict

runner = CliRunner()


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def _tiny_raw() -> dict[str, Any]:
    raw = tiny_config_dict("none", epochs=1, max_steps_per_epoch=1)
    raw["data"]["num_samples"] = 64
    return raw


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny_raw()))
    return path


def _train(config_path: Path, out: Path, *sets: str):
    args = ["train", str(config_path), "--out", str(out), "--quiet"]
    for item in sets:
        args += ["--set", item]
    return runner.invoke(app, args)


# -- config values -------------------------------------------------------------------------

BAD_SETS = [
    ("train.lr=nan", "train.lr=nan"),
    ("train.lr=.nan", "train.lr=nan"),
    ("train.lr=inf", "train.lr=inf"),
    ("train.lr=-inf", "train.lr=-inf"),
    ("train.head_lr=inf", "train.head_lr=inf"),
    ("train.weight_decay=.inf", "train.weight_decay=inf"),
    ("privacy.omega=.nan", "privacy.omega=nan"),
    ("privacy.omega=inf", "privacy.omega=inf"),
    ("privacy.delta=nan", "privacy.delta=nan"),
    ("privacy.max_grad_norm=inf", "privacy.max_grad_norm=inf"),
    ("privacy.noise_multiplier=nan", "privacy.noise_multiplier=nan"),
    ("privacy.ssim_data_range=inf", "privacy.ssim_data_range=inf"),
    ("data.val_fraction=nan", "data.val_fraction=nan"),
    ("data.test_fraction=false", "data.test_fraction=False"),
    ("tasks.0.weight=nan", "tasks[0]: shape.weight=nan"),
    ("deepobfuscator.adversary_lr=inf", "deepobfuscator.adversary_lr=inf"),
    ("kd_mtl.distill_weight=nan", "kd_mtl.distill_weight=nan"),
    ("train.lr=true", "train.lr=True"),
    ("train.lr=abc", "train.lr='abc'"),
    ("train.lr=[1]", "train.lr=[1]"),
    ("train.lr={a: 1}", "train.lr={'a': 1}"),
    ("train.epochs=true", "train.epochs=True"),
    ("train.epochs=1.5", "train.epochs=1.5"),
    ("train.batch_size='64'", "train.batch_size='64'"),
    ("data.image_size=100000", "data.image_size=100000"),
    ("data.image_size=[16, true]", "data.image_size=[16, True]"),
    ("data.image_size=[16, [1]]", "data.image_size=[16, [1]]"),
    ("data.num_samples=1000000000000", "data.num_samples=1000000000000"),
    ("train.seed=-1", "train.seed=-1"),
    ("train.seed=99999999999999999999", "train.seed=99999999999999999999"),
    ("train.num_workers=100000", "train.num_workers=100000"),
    ("data.name=[1]", "data.name=[1]"),
    ("data.root=2020-01-01", "data.root=datetime.date"),
    ("data.cache=maybe", "data.cache='maybe'"),
    ("model.encoder=[1]", "model.encoder=[1]"),
    ("model.pretrained=5", "model.pretrained=5"),
    ("privacy.freeze_encoder=3", "privacy.freeze_encoder=3"),
    ("tasks.0.column=[1]", "shape.column=[1]"),
    ("tasks.0={}", "tasks[0].name is missing"),
    ("tasks.0=5", "tasks[0] must be a mapping"),
    ("method=bogus", "method='bogus'"),
    # --set keys
    (".=1", "--set '.=1'"),
    ("=1", "--set '=1'"),
    ("train.lr", "--set 'train.lr'"),
    ("train=5", "--set 'train=5'"),
    ("tasks.99.name=x", "--set tasks.99"),
    ("train.lr.x=1", "--set 'train.lr.x=1': train.lr is 0.001"),
    ("data.image_size.0=16", "data.image_size is 16"),
    ("bogus.x=1", "unknown section(s): ['bogus']"),
    ("train.bogus=1", "unknown key(s) in train: ['bogus']"),
    ("train.lr=[unclosed", "--set 'train.lr=[unclosed': value is not valid YAML"),
]


@pytest.mark.parametrize(("override", "fragment"), BAD_SETS)
def test_a_bad_set_names_its_key_before_anything_runs(config_path, tmp_path, override, fragment):
    _one_line_error(_train(config_path, tmp_path / "run", override), fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("epsilon", ["inf", ".inf", "nan", "-1", "0", "1e300"])
def test_target_epsilon_must_be_finite_and_at_most_100(config_path, tmp_path, epsilon):
    sets = ("privacy.mode=input", "privacy.noise_multiplier=null")
    result = _train(config_path, tmp_path / "run", *sets, f"privacy.target_epsilon={epsilon}")
    _one_line_error(result, "privacy.target_epsilon=", "(0, 100]", "privacy.mode=none or task")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the run would be valid")
def test_cuda_without_cuda_is_refused_up_front(config_path, tmp_path):
    _one_line_error(_train(config_path, tmp_path / "run", "train.device=cuda"), "train.device")


def test_diverged_training_writes_no_run(config_path, tmp_path):
    out = tmp_path / "run"
    result = _train(config_path, out, "train.lr=1e30", "train.max_steps_per_epoch=3")
    _one_line_error(result, "training diverged", "train.lr")
    assert not (out / "run.json").exists()


# -- config files --------------------------------------------------------------------------

CONFIG_FILES: list[tuple[str, Callable[[Path], None], str]] = [
    ("empty", lambda p: p.write_text(""), "is empty"),
    ("list", lambda p: p.write_text("- 1\n- 2\n"), "must be a mapping of sections, got list"),
    ("scalar", lambda p: p.write_text("42\n"), "got int"),
    ("binary", lambda p: p.write_bytes(b"\x00\xff\xfe\x80" * 64), "not a UTF-8 text"),
    ("bad yaml", lambda p: p.write_text("tasks: [unclosed\n"), "not valid YAML"),
    ("directory", lambda p: p.mkdir(), "cannot read config"),
    ("int key", lambda p: p.write_text("1: x\ntasks: [{name: a}]\n"), "unknown section(s): [1]"),
    ("nan value", lambda p: p.write_text("tasks: [{name: a}]\ntrain: {lr: .nan}\n"), "train.lr"),
]


@pytest.mark.parametrize(
    ("make", "fragment"), [c[1:] for c in CONFIG_FILES], ids=[c[0] for c in CONFIG_FILES]
)
def test_a_bad_config_file_is_one_line(tmp_path, make, fragment):
    path = tmp_path / "config.yaml"
    make(path)
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    _one_line_error(result, fragment)


# -- --out ---------------------------------------------------------------------------------


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
@pytest.mark.parametrize("command", ["train", "demo", "add-task"])
def test_out_that_is_or_lies_under_a_file_is_refused(config_path, tmp_path, command, under):
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    out = blocker / "run" if under else blocker
    args = {
        "train": ["train", str(config_path)],
        "demo": ["demo"],
        "add-task": ["add-task", str(tmp_path / "any-run"), "--task", "new"],
    }[command]
    result = runner.invoke(app, [*args, "--out", str(out), "--quiet"])
    _one_line_error(result, f"--out {out}", "lies under" if under else "is a file")
    assert blocker.read_text() == "not a folder"


# -- run dirs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny mode-'task' run (task modules, so add-task applies); copied per case."""
    raw = _tiny_raw()
    raw["privacy"]["mode"] = "task"
    out = tmp_path_factory.mktemp("bad-run") / "run"
    train_run(config_from_dict(raw), out, progress=False)
    return out


@pytest.fixture
def damaged(run_dir, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        record = json.loads((run / "run.json").read_text())
        change(record)
        (run / "run.json").write_text(json.dumps(record))

    return mutate


def _set(*path_and_value: Any) -> Callable[[Path], None]:
    *path, value = path_and_value

    def change(record: dict[str, Any]) -> None:
        node = record
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return _edit(change)


def _drop(key: str) -> Callable[[Path], None]:
    return _edit(lambda record: record.pop(key))


def _ghost_task(record: dict[str, Any]) -> None:
    """A task in run.json and its config that the weights have no module for."""
    record["tasks"].append("ghost")
    record["config"]["tasks"].append({"name": "ghost", "column": "large", "kind": "binary"})
    record["feature_shapes"]["ghost"] = record["feature_shapes"]["shape"]


def _one_task_only(record: dict[str, Any]) -> None:
    """run.json lists one task (with its feature shape) while its config keeps two."""
    record["tasks"] = ["shape"]
    record["feature_shapes"].pop("large")


def _truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])

    return mutate


def _nan_weight(run: Path) -> None:
    state = load_file(str(run / "producer.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], math.nan)
    save_file(state, str(run / "producer.safetensors"))


def _directory_instead(name: str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()

    return mutate


# (id, damage, fragment of the error, whether load_producer sees it too)
DAMAGE: list[tuple[str, Callable[[Path], None], str, bool]] = [
    ("run.json a list", lambda r: (r / "run.json").write_text("[1, 2]"), "got list", True),
    ("run.json not JSON", lambda r: (r / "run.json").write_text("{oops"), "not valid JSON", True),
    ("run.json binary", lambda r: (r / "run.json").write_bytes(b"\xff\xfe\x00"), "JSON", True),
    ("no config", _drop("config"), "key 'config' is missing", True),
    ("no feature_shapes", _drop("feature_shapes"), "key 'feature_shapes' is missing", True),
    ("config not a dict", _set("config", 5), "config=5 is invalid", True),
    ("config value NaN", _set("config", "train", "lr", math.nan), "config: train.lr=nan", True),
    ("input_shape 2 ints", _set("input_shape", [3, 16]), "input_shape=[3, 16]", True),
    ("input_shape negative", _set("input_shape", [3, -16, 16]), "input_shape=", True),
    ("input_shape text", _set("input_shape", "abc"), "input_shape='abc'", True),
    ("input_shape changed", _set("input_shape", [3, 32, 32]), "input_shape=[3, 32, 32]", True),
    ("tasks text", _set("tasks", "shape"), "tasks='shape'", True),
    ("tasks ints", _set("tasks", [1, 2]), "tasks=[1, 2]", True),
    ("tasks vs config", _edit(_one_task_only), "disagrees with config.tasks", True),
    ("tasks vs feature_shapes", _set("tasks", ["shape"]), "a shape per task of ['shape']", True),
    ("private vs config", _set("private_attributes", []), "config.private_attributes", True),
    ("task without module", _edit(_ghost_task), "task_modules.ghost", True),
    ("feature_shapes changed", _set("feature_shapes", "shape", [8, 9, 9]), "feature_shapes=", True),
    ("feature_shapes empty", _set("feature_shapes", {}), "feature_shapes={}", True),
    ("transform text", _set("transform", "x"), "transform", True),
    ("transform std 0", _set("transform", "std", 0), "std=0", True),
    ("transform size", _set("transform", "image_size", [32, 32]), "transform.image_size", True),
    ("privacy a list", _set("privacy", []), "privacy=[]", True),
    ("privacy phase empty", _set("privacy", "phases", [{}]), "privacy.phases[0]", True),
    ("privacy epsilon text", _set("privacy", "epsilon", "x"), "privacy.epsilon='x'", True),
    ("metrics a list", _set("metrics", []), "metrics=[]", True),
    ("version", _set("version", 99), "version=99", True),
    ("producer truncated", _truncate("producer.safetensors"), "producer.safetensors", True),
    ("producer empty", _truncate("producer.safetensors", 0), "header too small", True),
    ("producer missing", lambda r: (r / "producer.safetensors").unlink(), "is missing", True),
    ("producer a folder", _directory_instead("producer.safetensors"), "is not a file", True),
    ("producer NaN", _nan_weight, "NaN or infinite weights", True),
    ("split_index changed", _set("config", "model", "split_index", 4), "unexpected", True),
    ("heads truncated", _truncate("heads.safetensors"), "heads.safetensors", False),
    ("heads empty", _truncate("heads.safetensors", 0), "heads.safetensors", False),
]


@pytest.mark.parametrize(
    ("damage", "fragment", "in_producer"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE]
)
def test_a_damaged_run_dir_is_one_line(damaged, damage, fragment, in_producer):
    damage(damaged)
    result = runner.invoke(app, ["audit", str(damaged), "--quick", "--device", "cpu", "--quiet"])
    _one_line_error(result, fragment)
    with pytest.raises(RunDirError, match=None):
        if in_producer:
            load_producer(damaged)
        else:
            load_heads(damaged)


@pytest.mark.parametrize("kind", ["missing", "file"])
@pytest.mark.parametrize("command", ["audit", "add-task"])
def test_a_run_dir_that_is_not_a_folder(tmp_path, command, kind):
    target = tmp_path / "run"
    if kind == "file":
        target.write_text("x")
    extra = ["--task", "new"] if command == "add-task" else ["--quick"]
    result = runner.invoke(app, [command, str(target), *extra])
    where = "(it is a file)" if kind == "file" else "(no such folder)"
    _one_line_error(result, f"{target} is not a finished run dir {where}: run.json is missing")


def test_the_run_written_is_strict_json_that_reads_back(run_dir):
    def refuse(constant: str) -> None:
        raise AssertionError(f"run.json holds {constant}")

    json.loads((run_dir / "run.json").read_text(), parse_constant=refuse)
    assert load_producer(run_dir).tasks == ["shape", "large"]


# -- add-task flags ------------------------------------------------------------------------

ADD_TASK = [
    (["--task", "new", "--omega", "nan"], "omega=nan"),
    (["--task", "new", "--omega", "inf"], "omega=inf"),
    (["--task", "new", "--omega", "-1"], "omega=-1"),
    (["--task", "new", "--epochs", "0"], "epochs=0"),
    (["--task", "new", "--epochs", "-1"], "epochs=-1"),
    (["--task", "new", "--kind", "bogus"], "--kind 'bogus'"),
    (["--task", "shape"], "task 'shape' already exists"),
    (["--task", "background"], "task 'background' already exists"),
    (["--task", "bad name!"], "--task 'bad name!'"),
    (["--task", "new", "--column", "nonexistent"], "nonexistent"),
]


@pytest.mark.parametrize(("args", "fragment"), ADD_TASK)
def test_add_task_flags(run_dir, args, fragment):
    # nothing is written: every one is refused before training starts
    result = runner.invoke(app, ["add-task", str(run_dir), "--quiet", *args])
    _one_line_error(result, fragment)


# -- audit flags ---------------------------------------------------------------------------

AUDIT = [
    (["--seed", "-1"], "seed=-1"),
    (["--seed", "99999999999"], "seed=99999999999"),
    (["--device", "bogus"], "device 'bogus'"),
    (["--sweep", "bogus"], "sweep 'bogus' is unknown"),
    (["--sweep", "epsilon", "--values", "epsilon=nan"], "sweep 'epsilon' value nan"),
    (["--sweep", "epsilon", "--values", "epsilon=-1"], "sweep 'epsilon' value -1"),
    (["--sweep", "epsilon", "--values", "epsilon=0"], "sweep 'epsilon' value 0"),
    (["--sweep", "epsilon", "--values", "epsilon=-inf"], "sweep 'epsilon' value -inf"),
    (["--sweep", "epsilon", "--values", "epsilon=1000"], "sweep 'epsilon' value 1000"),
    (["--sweep", "epsilon", "--values", "epsilon="], "sweep 'epsilon' has no values"),
    (["--sweep", "split", "--values", "split=abc"], "--values 'split=abc'"),
    (["--sweep", "split", "--values", "split=0"], "sweep 'split' value 0"),
    (["--sweep", "split", "--values", "split=99"], "model.split_index=99"),
    (["--sweep", "split", "--values", "split=4.5"], "sweep 'split' value 4.5"),
    (["--sweep", "split", "--values", "split=inf"], "sweep 'split' value inf"),
    (["--values", "split=5"], "sweep 'split', which is not asked for"),
]


@pytest.mark.parametrize(("args", "fragment"), AUDIT)
def test_audit_flags(run_dir, args, fragment):
    result = runner.invoke(app, ["audit", str(run_dir), "--quick", "--quiet", *args])
    _one_line_error(result, fragment)
    assert not (run_dir / "audit").exists()  # refused before anything was written


def test_an_audit_folder_that_is_a_file(damaged):
    (damaged / "audit").write_text("x")
    result = runner.invoke(app, ["audit", str(damaged), "--quick", "--device", "cpu", "--quiet"])
    _one_line_error(result, "cannot write the audit into", "audit")


def test_epsilon_inf_still_means_a_point_without_dp():
    check_sweeps(["epsilon"], {"epsilon": [1.0, math.inf]})
    config = config_from_dict(tiny_config_dict("both"))
    assert point_config(config, "epsilon", math.inf, "cpu").privacy.mode == "task"
    with pytest.raises(ConfigError, match="value nan"):
        check_sweeps(["epsilon"], {"epsilon": [math.nan]})


# -- strict JSON ---------------------------------------------------------------------------


def test_json_safe_turns_non_finite_numbers_into_null():
    value = {"a": math.inf, "b": [1.0, -math.inf, {"c": math.nan}], "d": (2, "x"), "e": None}
    assert json_safe(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"], "e": None}


def test_report_json_is_strict_with_null_for_non_finite(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "build_document", lambda report: Document("stub"))
    report = {"reconstruction": {"psnr": math.inf}, "metric": math.nan, "ok": 0.5}
    report_module.write_report(report, tmp_path)

    def refuse(constant: str) -> None:
        raise AssertionError(f"report.json holds {constant}")

    written = json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    assert written == {"reconstruction": {"psnr": None}, "metric": None, "ok": 0.5}


def _strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_of_a_run_is_strict_json(run_dir):
    _strict((run_dir / "run.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines
    for line in lines:
        _strict(line)


def test_a_diverged_loss_is_logged_as_null_not_nan(tmp_path, monkeypatch):
    """metrics.jsonl goes through json_safe: NaN in a record becomes null, never NaN."""
    from metamorphosis.train import loop

    real = loop.json_safe
    seen = []

    def poisoned(record):
        if record.get("event") == "epoch" and not seen:
            seen.append(record)
            record = {**record, "loss": math.nan}
        return real(record)

    monkeypatch.setattr(loop, "json_safe", poisoned)
    out = tmp_path / "run"
    train_run(config_from_dict(_tiny_raw()), out, progress=False)
    records = [_strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert seen and any(r.get("event") == "epoch" and r["loss"] is None for r in records)
