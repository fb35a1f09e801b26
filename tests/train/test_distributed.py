"""Training on 2 processes (gloo on CPU): the one-process run, rank 0 writing, resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from metamorphosis.cli import app
from metamorphosis.train.distributed import ONE_PROCESS, Distributed, RankShare
from tiny import tiny_config_dict

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_without_noise(rank: int, world_size: int, port: int, raw: dict, out: str) -> None:
    """One rank of a run whose DP-SGD adds no noise (clipping stays), so that a 2-rank
    run and a 1-process run can be compared weight for weight."""
    from metamorphosis.config import config_from_dict
    from metamorphosis.experiment import train_run
    from metamorphosis.privacy.engine import DPEngine

    torch.set_num_threads(1)
    if world_size > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
        )
    wrap = DPEngine.wrap

    def noiseless(self, model, optimizer, **blocks):
        model, optimizer = wrap(self, model, optimizer, **blocks)
        optimizer.noise_multiplier = 0.0  # the accountant still sees the configured noise
        return model, optimizer

    DPEngine.wrap = noiseless
    train_run(config_from_dict(raw), out, progress=False)


def _run(world_size: int, raw: dict, out) -> None:
    mp.spawn(
        _train_without_noise,
        args=(world_size, _free_port(), raw, str(out)),
        nprocs=world_size,
        join=True,
    )


@pytest.mark.parametrize("private_heads", [False, True], ids=["heads-synced", "heads-dp-sgd"])
def test_two_ranks_train_the_one_process_run(tmp_path, private_heads):
    # A DP encoder phase, then DP modules: 4 steps of DP-SGD on the producer, SGD on the
    # heads (or DP-SGD under privacy.private_heads: clipped per sample on each rank and
    # all-reduced, as the producer is). A small learning rate and few steps on purpose:
    # this tiny model's training is chaotic (one process on 1 or 2 threads drifts 0.25
    # apart within 3 steps at lr 1e-3), so only a short run can show agreement to float
    # rounding.
    raw = tiny_config_dict(
        "both",
        {"private_heads": private_heads},
        epochs=1,
        optimizer="sgd",
        lr=1e-4,
        max_steps_per_epoch=2,
    )
    _run(1, raw, tmp_path / "one")
    _run(2, raw, tmp_path / "two")
    one, two = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert two["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert one["distributed"] == {"world_size": 1, "backend": None}
    assert two["privacy"]["epsilon"] == one["privacy"]["epsilon"]  # the same sampling
    assert two["privacy"]["steps"] == one["privacy"]["steps"]
    assert two["privacy"]["private_heads"] is private_heads
    for name, tolerance in (("producer.safetensors", 1e-6), ("heads.safetensors", 5e-5)):
        a, b = (load_file(tmp_path / d / name) for d in ("one", "two"))
        assert a.keys() == b.keys()
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert worst < tolerance, (name, worst)
    # rank 0 alone logs: as many records as the one-process run
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert len(lines[0]) == len(lines[1]) > 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_a_rank_share_splits_every_global_batch_and_skips_the_tiny_ones():
    batches = [[0, 1, 2, 3, 4], [5], [], [6, 7]]
    ranks = [Distributed(world_size=2, rank=r, backend="gloo") for r in (0, 1)]
    shares = [list(RankShare(batches, d)) for d in ranks]
    assert shares == [[[0, 2, 4], [6]], [[1, 3], [7]]]
    assert list(RankShare(batches, ONE_PROCESS)) == [[0, 1, 2, 3, 4], [5], [6, 7]]


# -- torchrun, end to end -----------------------------------------------------------------


def _torchrun(config, out, *, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(port),
        "-m",
        "metamorphosis",
        "train",
        str(config),
        "--out",
        str(out),
        "--quiet",
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs_logged(out) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"event": "epoch"' in line for line in path.read_text().splitlines())


def test_torchrun_killed_mid_run_resumes_from_the_checkpoint(tmp_path):
    raw = tiny_config_dict("none", epochs=6)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    launcher = _torchrun(config, out, port=_free_port())
    deadline = time.monotonic() + 240
    while _epochs_logged(out) < 1:  # a checkpoint is written with each epoch record
        assert launcher.poll() is None, launcher.communicate()[0]
        assert time.monotonic() < deadline, "no epoch finished in 240 s"
        time.sleep(0.1)
    workers = psutil.Process(launcher.pid).children(recursive=True)
    workers[-1].send_signal(signal.SIGKILL)  # one rank dies; torchrun stops the other
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert not (out / "run.json").exists() and (out / "checkpoint.pt").exists()
    # another number of processes is refused, in one line, before training
    single = runner.invoke(app, ["train", str(config), "--out", str(out)])
    assert single.exit_code == 2 and "2 process(es)" in single.stderr, single.output
    again = _torchrun(config, out, port=_free_port())
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    record = json.loads((out / "run.json").read_text())
    assert record["distributed"]["world_size"] == 2
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").open()]
    assert "resume" in events and events.count("epoch") == 6  # no epoch logged twice
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "method=nopeek", "--set", "privacy.mode=none"], "cannot train on 2 processes"),
        (["--remote", "--port", "0"], "--remote trains in one process"),
    ],
)
def test_what_cannot_be_distributed_is_refused_before_joining(
    tmp_path, monkeypatch, args, fragment
):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict("none", epochs=1)))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; no peer ever joins
    monkeypatch.setenv("RANK", "0")
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
