"""A tiny trained run and a real ``metamorphosis serve`` process on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from metamorphosis.config import config_from_dict
from metamorphosis.experiment import train_run
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.server import free_port
from tiny import tiny_config_dict


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """A finished tiny run (public tasks ``shape`` and ``large``)."""
    out = tmp_path_factory.mktemp("serve") / "run"
    train_run(config_from_dict(tiny_config_dict("both", epochs=1)), out, progress=False)
    return out


@dataclass
class Server:
    url: str
    metrics_url: str
    run_dir: Path
    process: subprocess.Popen
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        """The server's stderr so far (its access log)."""
        return self.log_path.read_text()


@contextmanager
def serving(run_dir: Path, *args: str, env: dict[str, str] | None = None):
    """``metamorphosis serve RUN_DIR --port P ARGS`` in a subprocess, healthy, then stopped:
    yields its URL, process and log file (a file, not a pipe: a full pipe would stall it)."""
    port = free_port()
    command = [sys.executable, "-m", "metamorphosis", "serve", str(run_dir), "--port", str(port)]
    log_path = run_dir.parent / f"serve-{port}.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [*command, *args], stdout=log_file, stderr=log_file, text=True, env=env
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, process, log_path)
            yield url, process, log_path
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(served_run):
    """``serve`` in a subprocess with keys for each task, one expired, one to revoke."""
    store = KeyStore(served_run / "keys.sqlite")
    issued = {
        "shape": store.issue("shape"),
        "large": store.issue("large"),
        "expired": store.issue("shape", ttl=0.01),
        "to_revoke": store.issue("shape"),
    }
    metrics_port = free_port()
    limits = ("--max-body-bytes", "4096", "--max-ids", "16")
    with serving(served_run, "--metrics-port", str(metrics_port), *limits) as running:
        url, process, log_path = running
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        server = Server(url, metrics_url, served_run, process, log_path)
        server.keys = {name: key.secret for name, key in issued.items()}
        server.key_ids = {name: key.record.key_id for name, key in issued.items()}
        yield server


def wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not come up in 90 s"
        time.sleep(0.2)


@pytest.fixture
def serve_process():
    """:func:`serving`, for the test modules (a conftest is not imported by name)."""
    return serving
