"""Wiring for ``metamorphosis serve``: run dir + source -> service -> uvicorn.

Kept apart from :mod:`.app` so that the rules on binding (no plaintext on a
non-loopback address unless asked) are testable without starting a server.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from pathlib import Path

from ..config import config_from_dict
from ..data import ImageTransform, build_datasets
from ..errors import ConfigError
from ..rundir import load_producer, read_run_json
from .keys import KeyStore
from .service import (
    VIDEO_SUFFIXES,
    DatasetSource,
    FeatureSource,
    FolderSource,
    ProducerService,
    VideoSource,
)

__all__ = [
    "KEYS_FILE",
    "SPLITS",
    "build_service",
    "check_bind",
    "free_port",
    "key_store",
    "serve_forever",
]

KEYS_FILE = "keys.json"
SPLITS = ("train", "val", "test")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for servers whose URL must be known up front)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def key_store(run_dir: str | Path) -> KeyStore:
    """The run's consumer keys (``RUN_DIR/keys.json``, CONTRACT: run dir)."""
    read_run_json(run_dir)  # a clear error when this is not a run dir
    return KeyStore(Path(run_dir) / KEYS_FILE)


def _source(run_dir: Path, source: str, data_root: str | Path | None) -> FeatureSource:
    if source in SPLITS:
        record = read_run_json(run_dir)
        config = config_from_dict(record["config"])
        data = build_datasets(
            config.data, config.all_labels, seed=config.train.seed, root=data_root
        )
        return DatasetSource(getattr(data, source))
    path = Path(source)
    if path.is_dir():
        return FolderSource(path, load_producer(run_dir).preprocess)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        transform = ImageTransform.from_dict(read_run_json(run_dir)["transform"])
        return VideoSource(path, transform)
    raise ConfigError(
        f"--source {source!r} is invalid: expected one of {list(SPLITS)} (a split of the "
        f"run's dataset), an image folder or a video file ({', '.join(VIDEO_SUFFIXES)})"
    )


def build_service(
    run_dir: str | Path,
    *,
    source: str = "test",
    data_root: str | Path | None = None,
    max_ids: int = 256,
) -> ProducerService:
    """The service for a run dir: its producer, its keys and the chosen inputs."""
    run_dir = Path(run_dir)
    return ProducerService(
        load_producer(run_dir),
        _source(run_dir, source, data_root),
        key_store(run_dir),
        max_ids=max_ids,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, tls: bool, insecure: bool) -> None:
    """Refuse plaintext on a non-loopback address unless ``insecure`` says so."""
    if not _is_loopback(host) and not tls and not insecure:
        raise ConfigError(
            f"refusing to serve plaintext HTTP on {host}: give --ssl-certfile and "
            "--ssl-keyfile, bind 127.0.0.1, or pass --insecure"
        )


def serve_forever(
    service: ProducerService,
    *,
    host: str,
    port: int,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    metrics_port: int | None = None,
    max_concurrency: int = 8,
    max_body_bytes: int = 64 * 2**20,
) -> None:
    """Run uvicorn until interrupted; metrics on their own port when asked."""
    import uvicorn
    from prometheus_client import start_http_server

    from .app import ACCESS_LOG, create_app

    app = create_app(service, max_body_bytes=max_body_bytes, max_concurrency=max_concurrency)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger(ACCESS_LOG)
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    if metrics_port is not None:
        start_http_server(metrics_port, addr=host, registry=app.state.metrics.registry)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        access_log=False,  # ours is structured and carries no query strings
        log_level="warning",
    )
