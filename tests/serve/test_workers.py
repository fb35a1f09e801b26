"""``serve --workers 2``: one port, two processes, one key store, summed metrics."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from typer.testing import CliRunner

from metamorphosis.cli import app
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.server import free_port
from metamorphosis.serve.workers import MAX_WORKERS

runner = CliRunner()
SCHEMA = "/v1/tasks/shape/schema"
ROUTE = "/v1/tasks/{task}/schema"  # the label: the route's template


@pytest.fixture
def run_copy(served_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(served_run, copy, ignore=shutil.ignore_patterns("keys.*"))
    return copy


def requests_by_worker(folder, status: str) -> Counter:
    """Schema requests answered ``status``, per worker pid, from the workers' own
    Prometheus files (prometheus-client's multiprocess mode: one file per pid)."""
    counts: Counter = Counter()
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            name, _sample, labels, *_ = json.loads(key)
            if name == "metamorphosis_requests" and labels == {"route": ROUTE, "status": status}:
                counts[pid] += int(value)
    return counts


def pinned_clients(url: str, secret: str, folder, workers: int = 2) -> list[httpx.Client]:
    """Keep-alive clients, one connection each, until every worker holds at least one
    (a worker still loading the producer accepts nothing yet)."""
    clients: list[httpx.Client] = []
    deadline = time.monotonic() + 60
    while len(requests_by_worker(folder, "200")) < workers:
        assert time.monotonic() < deadline and len(clients) < 200, "a worker never answered"
        client = httpx.Client(base_url=url, headers=auth(secret), timeout=10)
        assert client.get(SCHEMA).status_code == 200
        clients.append(client)
        time.sleep(0.05)  # the kernel hands a burst of connections to one worker
    return clients


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def statuses(clients, secret: str) -> set[int]:
    return {client.get(SCHEMA, headers=auth(secret)).status_code for client in clients}


def test_a_key_revoked_while_two_workers_run_is_refused_by_both(run_copy, tmp_path, serve_process):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"stale")  # a previous run's: must be removed
    metrics_port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    store = KeyStore(run_copy / "keys.sqlite")
    first = store.issue("shape")
    args = ("--workers", "2", "--metrics-port", str(metrics_port))
    with serve_process(run_copy, *args, env=env) as (url, _, log_path):
        assert "with 2 workers" in log_path.read_text()
        clients = pinned_clients(url, first.secret, folder)
        assert 1 not in requests_by_worker(folder, "200")  # the stale file went
        # issued and revoked by this process, neither worker: seen at the next request
        second = store.issue("shape")
        assert statuses(clients, second.secret) == {200}
        before = requests_by_worker(folder, "401")
        store.revoke(second.record.key_id)
        assert statuses(clients, second.secret) == {401}
        refused = requests_by_worker(folder, "401") - before
        assert len(refused) == 2, refused  # both workers refused it, each at once
        assert statuses(clients, first.secret) == {200}
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        ok = f'metamorphosis_requests_total{{route="{ROUTE}",status="200"}}'
        total = next(line for line in scraped.splitlines() if line.startswith(ok))
        assert float(total.split()[-1]) == 3 * len(clients)  # summed over both workers
        for client in clients:
            client.close()
        workers = set(requests_by_worker(folder, "200"))
    deadline = time.monotonic() + 30  # stopping the parent stops its workers
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived the server"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _issue_and_revoke(path, worker: int, out: list) -> None:
    store = KeyStore(path)
    for i in range(8):
        issued = store.issue("shape")
        if i % 2:
            store.revoke(issued.record.key_id)
        out.append((issued, bool(i % 2)))


def test_two_workers_and_two_writers_keep_one_consistent_store(run_copy, tmp_path, serve_process):
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    store = KeyStore(run_copy / "keys.sqlite")
    probe = store.issue("shape")
    with serve_process(run_copy, "--workers", "2", env=env) as (url, _, _log):
        clients = pinned_clients(url, probe.secret, folder)
        written: list = []
        writers = [
            threading.Thread(target=_issue_and_revoke, args=(store.path, w, written))
            for w in range(2)
        ]
        for writer in writers:
            writer.start()
        while any(w.is_alive() for w in writers):  # requests race the writes
            assert statuses(clients, probe.secret) == {200}
        for writer in writers:
            writer.join()
        assert len(written) == 16 and len(store.list()) == 17  # no key lost
        for issued, revoked in written:  # and none came back: every worker agrees
            assert statuses(clients, issued.secret) == ({401} if revoked else {200})
        for client in clients:
            client.close()


@pytest.mark.parametrize("workers", ["0", "-1", str(MAX_WORKERS + 1)])
def test_a_bad_worker_count_is_one_line(served_run, workers):
    result = runner.invoke(app, ["serve", str(served_run), "--port", "0", "--workers", workers])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--workers" in lines[0] and f"1 to {MAX_WORKERS}" in lines[0]
