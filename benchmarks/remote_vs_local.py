"""Train one config in process and over HTTP (one consumer process per public task); compare.

    python benchmarks/remote_vs_local.py src/metamorphosis/demo.yaml --out /tmp/remote_vs_local
    python benchmarks/remote_vs_local.py src/metamorphosis/demo.yaml --out /tmp/rvl_dp_heads \
        --set defence.preset=null --set privacy.mode=input --set privacy.private_heads=true \
        --set train.epochs=2

Prints the test metrics of both runs, ε, the largest difference between their
logged step losses, and the wall time of each (``--set`` overrides keys of the config,
as ``metamorphosis train --set`` does; the config used is written to ``OUT/config.yaml``).
Both producers run as subprocesses with the same settings, so they share thread counts.
With ``privacy.private_heads`` each consumer draws its own head noise, so the two runs
differ by their noise draws, not only by float rounding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from metamorphosis.config import apply_overrides, config_from_dict
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.server import free_port


def _run(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "metamorphosis", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, name: str) -> str:
    out, err = process.communicate()
    if process.returncode != 0:
        sys.exit(f"{name} failed:\n{err[-3000:]}")
    return out


def _step_losses(run_dir: Path) -> list[dict[str, float]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["losses"] for x in lines if x["event"] == "step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    raw = apply_overrides(yaml.safe_load(args.config.read_text()), args.set)
    tasks = [spec.name for spec in config_from_dict(raw).tasks]  # checks the whole config
    local_dir, remote_dir = args.out / "local", args.out / "remote"
    remote_dir.mkdir(parents=True)
    args.config = args.out / "config.yaml"
    args.config.write_text(yaml.safe_dump(raw, sort_keys=False))
    keys = KeyStore(remote_dir / "keys.sqlite")
    secrets = {task: keys.issue(task).secret for task in tasks}
    port = free_port()

    started = time.perf_counter()
    _finish(_run("train", str(args.config), "--out", str(local_dir), "--quiet"), "local run")
    local_seconds = time.perf_counter() - started

    started = time.perf_counter()
    producer = _run(
        "train",
        str(args.config),
        "--out",
        str(remote_dir),
        "--quiet",
        "--remote",
        "--port",
        str(port),
    )
    consumers = {
        task: _run(
            "consume",
            f"http://127.0.0.1:{port}",
            "--task",
            task,
            "--key",
            secrets[task],
            "--train",
            str(args.config),
        )
        for task in tasks
    }
    _finish(producer, "remote producer")
    for task, process in consumers.items():
        print(f"consumer {task}: {_finish(process, f'consumer {task}').strip()}")
    remote_seconds = time.perf_counter() - started

    local = json.loads((local_dir / "run.json").read_text())
    remote = json.loads((remote_dir / "run.json").read_text())
    for label, metrics in local["metrics"].items():
        print(f"{label:<12} in process {metrics}  over HTTP {remote['metrics'][label]}")
    gaps = [
        abs(a[name] - b[name])
        for a, b in zip(_step_losses(local_dir), _step_losses(remote_dir), strict=True)
        for name in a
    ]
    print(
        f"epsilon: in process {local['privacy']['epsilon']}, over HTTP "
        f"{remote['privacy']['epsilon']}"
    )
    print(f"largest step-loss difference over {len(gaps)} logged losses: {max(gaps):.2e}")
    print(f"wall time: in process {local_seconds:.0f} s, over HTTP {remote_seconds:.0f} s")


if __name__ == "__main__":
    main()
