"""Feature-fetch cost over loopback HTTP, as ratios measured in one run.

For ResNet-18 producers split at 5, 7 and 9 (64×64 inputs), a real uvicorn
server on 127.0.0.1 serves features of in-memory images. Printed per split
and batch size (1 and 32):

* p50 / p99 of a feature fetch (request → decoded tensor) with ``httpx``;
* the bare in-process producer forward for the same batch;
* a bare loopback socket transfer of the same number of bytes;
* the ratio fetch / (socket + forward): the HTTP, auth and codec overhead.

Then requests/s for single-image fetches from 4 concurrent clients, the
body size of one 32-image batch per encoding, and the split-learning round
trip through the training routes: the producer publishes a step's features,
a consumer fetches them and posts a gradient of the same shape, the producer
has it (p50 / p99), next to the forward plus a socket transfer of the bytes
both ways; the target is under 2× that for batch 32 at 64×16×16.

    python benchmarks/serve_bench.py            # full
    python benchmarks/serve_bench.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
import uvicorn

from metamorphosis.config import config_from_dict
from metamorphosis.models.producer import build_network, build_producer
from metamorphosis.serve.app import create_app
from metamorphosis.serve.client import ConsumerClient
from metamorphosis.serve.codec import (
    MEDIA_TYPE,
    decode_tensors,
    encode_tensors,
    encoded_size_report,
)
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.server import free_port
from metamorphosis.serve.service import ProducerService
from metamorphosis.serve.training import TrainingServer
from metamorphosis.train.remote import TrainingHub

SIZE = 64


class RandomImages:
    """A feature source of fixed random images (ids ``img-0`` …)."""

    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self._images = torch.randn(count, 3, SIZE, SIZE, generator=generator)

    def ids(self) -> list[str]:
        return [f"img-{i}" for i in range(len(self._images))]

    def images(self, ids: Sequence[str]) -> torch.Tensor:
        return self._images[[int(i.split("-")[1]) for i in ids]]


def _producer(split: int):
    config = config_from_dict(
        {
            "model": {"encoder": "resnet18", "split_index": split, "module": "cross-sec"},
            "tasks": [{"name": "task", "kind": "binary"}],
            "privacy": {"mode": "none"},
        }
    )
    torch.manual_seed(0)
    return build_producer(config, build_network(config), (3, SIZE, SIZE)).eval()


def _start_server(service: ProducerService) -> tuple[uvicorn.Server, str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(service, max_concurrency=64), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.05)


def _socket_transfer_ms(nbytes: int, repeats: int) -> list[float]:
    """Wall time to send ``nbytes`` over a loopback TCP connection and read them all."""
    payload = b"\0" * nbytes
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            for _ in range(repeats):
                connection.recv(1)
                connection.sendall(payload)

    threading.Thread(target=serve, daemon=True).start()
    times = []
    with socket.create_connection(("127.0.0.1", port)) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            client.sendall(b"g")
            left = nbytes
            while left:
                left -= len(client.recv(min(left, 1 << 20)))
            times.append(1000 * (time.perf_counter() - started))
    listener.close()
    return times


def _times_ms(run: Callable[[], object], repeats: int) -> list[float]:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - started))
    return times


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def _bench_split(split: int, repeats: int, key_dir: Path) -> None:
    producer = _producer(split)
    keys = KeyStore(key_dir / f"keys-{split}.sqlite")
    secret = keys.issue("task").secret
    service = ProducerService(producer, RandomImages(64), keys, max_ids=64)
    server, url = _start_server(service)
    with ConsumerClient(url, task="task", key=secret) as client:
        for batch in (1, 32):
            ids = [f"img-{i}" for i in range(batch)]
            images = service.source.images(ids)
            with torch.no_grad():
                forward = _times_ms(
                    lambda images=images: producer.features(images, "task"), repeats
                )
            fetch = _times_ms(lambda ids=ids: client.features(ids), repeats)
            features, _ = client.features(ids)
            nbytes = features.numel() * 4
            wire = _socket_transfer_ms(nbytes, repeats)
            base = statistics.median(wire) + statistics.median(forward)
            print(
                f"split {split} {'×'.join(map(str, features.shape[1:])):>10} batch {batch:>2}: "
                f"fetch p50 {statistics.median(fetch):7.2f} ms p99 {_p(fetch, 99):7.2f} ms | "
                f"forward {statistics.median(forward):7.2f} ms | "
                f"socket {statistics.median(wire):6.2f} ms for {nbytes / 1e3:.0f} KB | "
                f"fetch / (socket + forward) = "
                f"{statistics.median(fetch) / base:.2f}"
            )
        if split == 5:
            _concurrent_rate(url, secret, repeats)
            sizes = encoded_size_report(client.features([f"img-{i}" for i in range(32)])[0])
            print(
                "body bytes of 32 features at split 5: "
                + ", ".join(f"{name} {size / 1e3:.0f} KB" for name, size in sizes.items())
            )
    server.should_exit = True


def _concurrent_rate(url: str, secret: str, repeats: int) -> None:
    """Single-image fetches per second from 4 concurrent clients."""
    total = 20 * repeats

    def work(worker: int) -> None:
        with ConsumerClient(url, task="task", key=secret) as client:
            for i in range(total // 4):
                client.features([f"img-{(worker * 7 + i) % 64}"])

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    seconds = time.perf_counter() - started
    print(f"4 concurrent clients, single-image fetches at split 5: {total / seconds:.0f} req/s")


def _round_trips(split: int, repeats: int, key_dir: Path) -> None:
    """Features out and gradient back through the training routes, per batch size."""
    producer = _producer(split)
    hub = TrainingHub(["task"], timeout=30)
    keys = KeyStore(key_dir / f"train-keys-{split}.sqlite")
    secret = keys.issue("task").secret
    stop = threading.Event()
    with TrainingServer(hub, keys) as server:
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": MEDIA_TYPE}

        def consume() -> None:  # answers every step with a zero gradient, polling tightly
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
                while not stop.is_set():
                    offered = http.post("/v1/tasks/task/train/next")
                    if offered.status_code == 204:
                        time.sleep(0.0005)
                        continue
                    tensors, metadata = decode_tensors(offered.content)
                    grad = encode_tensors(
                        {"grad": torch.zeros_like(tensors["features"])},
                        metadata={"loss": "0.0"},
                    )
                    http.post(
                        f"/v1/tasks/task/train/steps/{metadata['step_id']}/grad", content=grad
                    )

        threading.Thread(target=consume, daemon=True).start()
        for batch in (1, 32):
            images = torch.randn(batch, 3, SIZE, SIZE)
            with torch.no_grad():
                features = producer.features(images, "task")
            trip = _times_ms(
                lambda features=features: hub.wait(hub.publish("task", features)), repeats
            )
            with torch.no_grad():
                forward = _times_ms(
                    lambda images=images: producer.features(images, "task"), repeats
                )
            nbytes = features.numel() * 4
            wire = [2 * t for t in _socket_transfer_ms(nbytes, repeats)]
            base = statistics.median(wire) + statistics.median(forward)
            total = statistics.median(trip) + statistics.median(forward)
            print(
                f"round trip split {split} batch {batch:>2}: features out + grad back p50 "
                f"{statistics.median(trip):7.2f} ms p99 {_p(trip, 99):7.2f} ms | with forward "
                f"{total:7.2f} ms vs forward + socket both ways {base:7.2f} ms = "
                f"{total / base:.2f}"
            )
        stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    args = parser.parse_args()
    repeats = 5 if args.quick else 50
    print(f"torch threads: {torch.get_num_threads()}, repeats: {repeats}")
    with tempfile.TemporaryDirectory() as folder:
        for split in (5, 7, 9):
            _bench_split(split, repeats, Path(folder))
        for split in (5, 7, 9):
            _round_trips(split, repeats, Path(folder))


if __name__ == "__main__":
    main()
