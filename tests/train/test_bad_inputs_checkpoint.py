"""Bad checkpoints, kills mid-write and non-finite JSON: one clear line each, nothing lost."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import metamorphosis.privacy.accounting as accounting
import metamorphosis.train.checkpoint as checkpoint_module
import metamorphosis.train.loop as loop
from metamorphosis.config import config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import (
    CheckpointError,
    DataError,
    MetaMorphosisError,
    PrivacyError,
    RunDirError,
)
from metamorphosis.experiment import train_run
from metamorphosis.io import atomic_write, remove_stale_temporaries, write_json
from metamorphosis.train.checkpoint import load_checkpoint, save_checkpoint
from metamorphosis.train.loop import Trainer
from tiny import tiny_config_dict

TESTS = Path(__file__).resolve().parents[1]


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    return message


class _Hostile:
    """Pickled by reference: loading it would import and call code."""


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return buffer.getvalue()


GOOD = _torch_bytes({"phase": 0, "weights": torch.zeros(4096)})
BAD_FILES = {  # file content -> expected reason
    "empty": (b"", "empty file"),
    "garbage": (b"hello, I am not a checkpoint\n" * 5, "not a torch checkpoint"),
    "truncated": (GOOD[: len(GOOD) // 2], "truncated"),
    "tail cut": (GOOD[:-10], "truncated"),
    "foreign zip": (_zip_bytes(), "corrupt torch archive"),
    "pickled object": (_torch_bytes({"phase": 0, "x": _Hostile()}), "pickled objects"),
    "pickled call": (pickle.dumps(os.getcwd), "not a torch checkpoint"),
    "no state": (_torch_bytes([1, 2, 3]), "not a metamorphosis checkpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_checkpoint_is_one_line_with_reason_and_advice(tmp_path: Path, case: str):
    content, reason = BAD_FILES[case]
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = _one_line(info.value)
    assert message.startswith(f"cannot read checkpoint {path}: ")
    assert reason in message
    assert message.endswith("delete it to restart training from scratch")
    assert "weights_only" not in message and "trust" not in message


def test_checkpoint_that_is_a_directory(tmp_path: Path):
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_good_checkpoint_round_trips(tmp_path: Path):
    save_checkpoint(tmp_path / "c.pt", {"phase": 1, "x": torch.arange(3)})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["phase"] == 1 and torch.equal(state["x"], torch.arange(3))


# -- strict JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"metrics": {"smile": {"accuracy": math.nan}}}, "metrics.smile.accuracy"),
        ({"privacy": {"epsilon": math.inf}}, "privacy.epsilon"),
        ({"phases": [{"steps": 1.0}, {"sigma": -math.inf}]}, "phases.1.sigma"),
    ],
)
def test_write_json_refuses_non_finite_values(tmp_path: Path, value: dict, where: str):
    path = tmp_path / "run.json"
    with pytest.raises(RunDirError) as info:
        write_json(path, value)
    message = _one_line(info.value)
    assert str(path) in message and where in message and "not finite" in message
    assert isinstance(info.value, MetaMorphosisError)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_write_json_writes_strict_json(tmp_path: Path):
    write_json(tmp_path / "a.json", {"x": 1.5, "y": [None, "z"]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "y": [None, "z"]}


# -- what a kill leaves behind ------------------------------------------------------------


def test_remove_stale_temporaries_matches_only_atomic_write_names(tmp_path: Path):
    stale = [tmp_path / ".checkpoint.pt.k3_x9zq1.tmp", tmp_path / ".run.json.abcdefgh.tmp"]
    kept = [
        tmp_path / ".keys.json.abcdefgh.tmp",  # another writer's, not ours
        tmp_path / ".checkpoint.pt.tmp",
        tmp_path / ".checkpoint.pt.short.tmp",
        tmp_path / "checkpoint.pt.abcdefgh.tmp",
        tmp_path / "checkpoint.pt",
        tmp_path / "notes.tmp",
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
    (tmp_path / ".checkpoint.pt.dir12345.tmp").mkdir()  # a folder is never removed
    removed = remove_stale_temporaries(tmp_path, ["checkpoint.pt", "run.json"])
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert remove_stale_temporaries(tmp_path / "nowhere", ["checkpoint.pt"]) == []


def test_atomic_write_temporaries_match_the_cleanup_pattern(tmp_path: Path):
    seen = []
    atomic_write(tmp_path / "checkpoint.pt", lambda tmp: seen.append(tmp) or tmp.write_bytes(b"1"))
    seen[0].write_bytes(b"left")  # as if the rename had never happened
    assert remove_stale_temporaries(tmp_path, ["checkpoint.pt"]) == [seen[0]]


class _Interrupt(Exception):
    pass


def _interrupted_run(out: Path, monkeypatch: pytest.MonkeyPatch, config, saves: int = 1) -> None:
    """Train until ``saves`` checkpoints are written, then stop as if killed."""
    real_save = checkpoint_module.save_checkpoint
    count = {"n": 0}

    def save_then_die(path, state):
        real_save(path, state)
        count["n"] += 1
        if count["n"] == saves:
            raise _Interrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupt):
        train_run(config, out, progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)


def _epochs(out: Path) -> list[tuple[str, int]]:
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(e["phase"], e["epoch"]) for e in events if e["event"] == "epoch"]


def test_resume_drops_records_after_the_checkpoint_and_stale_temporaries(
    tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
):
    config = tiny_config("none", epochs=2)
    out = tmp_path / "run"
    _interrupted_run(out, monkeypatch, config)
    # what a kill during epoch 1 leaves: its step records, a half-written line, a temporary
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"event": "epoch", "phase": "joint", "epoch": 1}) + "\n")
        handle.write('{"event": "step", "pha')
    stale = out / ".checkpoint.pt.a1b2c3d4.tmp"
    stale.write_bytes(b"\0" * 1000)
    train_run(config, out, progress=False)
    assert not stale.exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert _epochs(out) == [("joint", 0), ("joint", 1)]


def test_sigkill_during_an_atomic_write_then_resume(tmp_path: Path, tiny_config):
    """A real SIGKILL between writing the second checkpoint's temporary and renaming it."""
    out = tmp_path / "run"
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        import torch
        torch.set_num_threads(1)
        import metamorphosis.train.checkpoint as checkpoint
        from metamorphosis.config import config_from_dict
        from metamorphosis.experiment import train_run
        from tiny import tiny_config_dict

        real_replace, seen = os.replace, []

        def replace_or_die(source, target):
            if str(target).endswith("checkpoint.pt"):
                seen.append(target)
                if len(seen) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            real_replace(source, target)

        checkpoint.os.replace = replace_or_die
        train_run(config_from_dict(tiny_config_dict("none", epochs=3)), {str(out)!r},
                  progress=False)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", child], env=env, timeout=300, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    left = [p for p in out.iterdir() if p.name.startswith(".checkpoint.pt.")]
    assert len(left) == 1 and left[0].stat().st_size > 0  # the kill left a temporary
    assert _epochs(out) == [("joint", 0), ("joint", 1)]  # epoch 1 is past the checkpoint

    train_run(tiny_config("none", epochs=3), out, progress=False)
    assert not left[0].exists()
    assert _epochs(out) == [("joint", 0), ("joint", 1), ("joint", 2)]


def test_resume_after_the_last_epoch_only_evaluates(tmp_path: Path, tiny_config):
    config = tiny_config("none", epochs=1)
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    config = config.with_label_classes(data.num_classes)
    Trainer(config, data, tmp_path, progress=False).fit()  # leaves its final checkpoint
    record = train_run(tiny_config("none", epochs=1), tmp_path, progress=False)
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "resume"] == [
        {"event": "resume", "phase": "evaluation", "epoch": 0}
    ]
    assert record["metrics"]


# -- checkpoints that load but do not fit -------------------------------------------------


def _break(state: dict, case: str) -> None:
    if case == "no heads":
        del state["heads"]
    elif case == "steps not a list":
        state["steps_done"] = "many"
    elif case == "phase beyond the plan":
        state["phase"] = 7
    elif case == "wrong weight shape":
        name = next(k for k, v in state["producer"].items() if v.ndim == 4)
        state["producer"][name] = torch.zeros(3, 3)
    elif case == "missing weights":
        state["producer"] = {}
    elif case == "head optimizer garbage":
        state["head_optimizers"] = {name: {"bogus": 1} for name in state["head_optimizers"]}
    elif case == "random state garbage":
        state["torch_rng"] = torch.zeros(3)


BROKEN = {
    "no heads": "no 'heads' entry",
    "steps not a list": "'steps_done' is a str, expected list",
    "phase beyond the plan": "phase 7",
    "wrong weight shape": "its producer does not fit",
    "missing weights": "its producer does not fit",
    "head optimizer garbage": "head optimizer does not fit this run (no entry 'param_groups')",
    "random state garbage": "its random state does not fit",
}


@pytest.fixture(scope="module")
def interrupted_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The checkpoint of a tiny 'none' run stopped after its first epoch."""
    out = tmp_path_factory.mktemp("interrupted")
    config = config_from_dict(tiny_config_dict("none", epochs=2))
    with pytest.MonkeyPatch.context() as patch:
        _interrupted_run(out, patch, config)
    return torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_checkpoint_with_a_wrong_structure_is_a_checkpoint_error(
    tmp_path: Path, tiny_config, interrupted_checkpoint: dict, case: str
):
    state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in interrupted_checkpoint.items()}
    _break(state, case)
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(CheckpointError) as info:
        train_run(tiny_config("none", epochs=2), tmp_path, progress=False)
    message = _one_line(info.value)
    assert BROKEN[case] in message and str(tmp_path / "checkpoint.pt") in message
    assert "delete it to restart training from scratch" in message


# -- splits a run cannot use ---------------------------------------------------------------


def test_empty_test_split_is_refused_before_training(tmp_path: Path):
    raw = tiny_config_dict("none", epochs=1)
    raw["data"]["test_fraction"] = 0.0
    with pytest.raises(DataError, match=r"empty test split \(96 items in all\)") as info:
        train_run(config_from_dict(raw), tmp_path, progress=False)
    _one_line(info.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_empty_validation_split_skips_validation(tmp_path: Path):
    raw = tiny_config_dict("none", epochs=1, max_steps_per_epoch=1)
    raw["data"]["val_fraction"] = 0.0
    train_run(config_from_dict(raw), tmp_path, progress=False)
    epochs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["val"] for e in epochs if e["event"] == "epoch"] == [{}]


def test_noise_too_small_for_a_meaningful_epsilon_is_refused_before_training(tmp_path: Path):
    """σ = 0.01: PRV took ~30 s to say ε = inf (or failed); the RDP pre-check refuses at once."""
    raw = tiny_config_dict("input", {"noise_multiplier": 0.01}, epochs=1)
    with pytest.raises(PrivacyError, match=r"noise multiplier 0\.01 .* above 100") as info:
        train_run(config_from_dict(raw), tmp_path, progress=False)
    _one_line(info.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_accountant_failure_is_a_privacy_error(monkeypatch: pytest.MonkeyPatch):
    """PRV raises 'Discrete mean differs significantly...' for some small σ and sample rates."""

    class FailingPRV:
        history: list = []

        def get_epsilon(self, delta):
            raise RuntimeError("Discrete mean differs significantly\nfrom continuous mean.")

    real = accounting.create_accountant
    monkeypatch.setattr(
        accounting, "create_accountant", lambda name: FailingPRV() if name == "prv" else real(name)
    )
    phases = [accounting.DPPhase("joint", 1.0, 0.01, 100)]
    with pytest.raises(PrivacyError, match=r"accountant 'prv' cannot account .*Discrete mean"):
        accounting.epsilon_of_phases(phases, delta=1e-6, accountant="prv")
