"""A bounded loopback load test of ``metamorphosis serve`` with 1 and 2 workers (locust).

For each worker count a real ``metamorphosis serve RUN_DIR --workers N`` process listens
on 127.0.0.1 only; locust (headless, in this process, a fixed number of users for a
fixed duration, no ramp beyond the first second) fetches single-image features of
random test items with a valid key (the server's ``--max-concurrency`` twice the users,
so the limit's 503s stay out of it). Printed per worker count: requests/s, p50 / p99
latency, errors (target 0), and the server's CPU seconds per request (parent and
workers, from ``psutil``), then the ratios 2 workers / 1 worker.

The load generator runs on the same machine, so on 2 cores it competes with the
workers for CPU: the 2-worker gain measured here is a lower bound of what a separate
client machine would see, and the CPU cost per request is the number that transfers.

    python benchmarks/serve_load.py                       # 8 users, 20 s per worker count
    python benchmarks/serve_load.py --users 4 --seconds 5 # smoke run
    python benchmarks/serve_load.py --run-dir RUN_DIR     # an existing run (its test split)

Needs the ``load`` extra (``pip install -e ".[serve,load]"``: locust).
"""

# locust patches the standard library with gevent when imported: before anything else.
from locust import HttpUser, constant, events, task  # isort: skip
from locust.env import Environment  # isort: skip

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402  (locust's own dependency)
import httpx  # noqa: E402
import psutil  # noqa: E402

HOST = "127.0.0.1"  # loopback only: this is not a tool to load someone else's server


def train_small_run(out: Path) -> Path:
    """A ResNet-18 producer (split 5, 64×64 generated scenes) trained for one epoch."""
    from metamorphosis.config import config_from_dict
    from metamorphosis.experiment import train_run

    config = {
        "data": {"name": "synthetic", "image_size": 64, "num_samples": 320, "test_fraction": 0.25},
        "model": {"encoder": "resnet18", "split_index": 5, "module": "cross-sec"},
        "tasks": [{"name": "shape", "column": "shape", "kind": "multiclass"}],
        "privacy": {"mode": "none"},
        "train": {"epochs": 1, "encoder_epochs": 1, "batch_size": 32, "seed": 0},
    }
    train_run(config_from_dict(config), out, progress=False)
    return out


@dataclass
class LoadResult:
    workers: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    error_kinds: str = ""

    def line(self) -> str:
        return (
            f"{self.workers} worker(s): {self.rps:7.1f} req/s | p50 {self.p50_ms:6.1f} ms "
            f"p99 {self.p99_ms:6.1f} ms | errors {self.errors} of {self.requests} | "
            f"server CPU {self.cpu_ms_per_request:5.2f} ms/request"
            + (f"\n  errors: {self.error_kinds}" if self.error_kinds else "")
        )


class Server:
    """``metamorphosis serve`` in a subprocess on a free loopback port."""

    def __init__(self, run_dir: Path, workers: int, log: Path, max_concurrency: int) -> None:
        from metamorphosis.serve.server import free_port

        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-m", "metamorphosis", "serve", str(run_dir)]
        command += ["--host", HOST, "--port", str(self.port), "--workers", str(workers)]
        command += ["--max-concurrency", str(max_concurrency)]
        # a file, not a pipe: a full pipe would stall it; closed in stop()
        self._log = open(log, "w")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self._log, stderr=self._log)
        self._wait_ready(workers, log)

    def _wait_ready(self, workers: int, log: Path) -> None:
        deadline = time.monotonic() + 120
        while len(self.tree()) < 1 + (workers if workers > 1 else 0) or not self._healthy():
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"serve did not come up in 120 s:\n{log.read_text()}")
            time.sleep(0.2)
        time.sleep(3 if workers > 1 else 0)  # every worker has loaded its producer

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def tree(self) -> list[psutil.Process]:
        parent = psutil.Process(self.process.pid)
        return [parent, *parent.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.tree():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()


def feature_user(task_name: str, secret: str, ids: list[str]) -> type[HttpUser]:
    class FeatureFetcher(HttpUser):
        wait_time = constant(0)

        @task
        def fetch(self) -> None:
            item = random.choice(ids)
            self.client.get(
                f"/v1/tasks/{task_name}/features",
                params={"id": item},
                headers={"Authorization": f"Bearer {secret}"},
                name="features",
            )

    return FeatureFetcher


def run_load(url: str, user: type[HttpUser], users: int, seconds: float) -> Environment:
    user.host = url
    env = Environment(user_classes=[user], events=events)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.spawn_later(seconds, runner.quit)
    runner.greenlet.join()
    return env


def measure(run_dir: Path, task_name: str, workers: int, users: int, seconds: float, log: Path):
    from metamorphosis.serve.server import key_store

    secret = key_store(run_dir).issue(task_name, ttl=3600).secret
    # A request's slot is freed just after its response is sent, so a user's next request
    # can find all `users` slots still taken: room for twice as many keeps 503s out of a
    # measure of throughput (the limit is per worker).
    server = Server(run_dir, workers, log, max_concurrency=2 * users)
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        items = httpx.get(
            f"{server.url}/v1/tasks/{task_name}/items", params={"limit": 256}, headers=headers
        ).json()["ids"]
        user = feature_user(task_name, secret, items)
        run_load(server.url, user, users, min(2.0, seconds))  # warm-up, not counted
        cpu_before = server.cpu_seconds()
        env = run_load(server.url, user, users, seconds)
        cpu = server.cpu_seconds() - cpu_before
    finally:
        server.stop()
    stats = env.stats.total
    requests = stats.num_requests
    return LoadResult(
        workers=workers,
        requests=requests,
        errors=stats.num_failures,
        rps=requests / seconds,
        p50_ms=stats.get_response_time_percentile(0.5),
        p99_ms=stats.get_response_time_percentile(0.99),
        cpu_ms_per_request=1000 * cpu / max(requests, 1),
        error_kinds="; ".join(f"{e.occurrences}× {e.error}" for e in env.stats.errors.values()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8, help="concurrent locust users")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--run-dir", type=Path, help="an existing run dir (default: train one)")
    parser.add_argument("--task", default=None, help="public task to fetch (default: the first)")
    args = parser.parse_args()
    if not 1 <= args.users <= 256 or not 1 <= args.seconds <= 600:
        parser.error("--users must be 1..256 and --seconds 1..600 (a bounded test)")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        run_dir = args.run_dir or train_small_run(Path(scratch) / "run")
        from metamorphosis.rundir import read_run_json

        tasks = [t["name"] for t in read_run_json(run_dir)["config"]["tasks"]]
        task_name = args.task or tasks[0]
        print(f"cpu cores: {os.cpu_count()}, users: {args.users}, {args.seconds:.0f} s per run")
        results = []
        for workers in (1, 2):
            log = Path(scratch) / f"serve-{workers}.log"
            results.append(measure(run_dir, task_name, workers, args.users, args.seconds, log))
            print(results[-1].line(), flush=True)
    one, two = results
    print(
        f"2 workers / 1 worker: req/s {two.rps / one.rps:.2f}, p50 {two.p50_ms / one.p50_ms:.2f}, "
        f"p99 {two.p99_ms / one.p99_ms:.2f}, CPU per request "
        f"{two.cpu_ms_per_request / one.cpu_ms_per_request:.2f}"
    )


if __name__ == "__main__":
    main()
