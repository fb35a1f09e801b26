"""Wiring for ``metamorphosis serve``: run dir + source -> service -> uvicorn.

Kept apart from :mod:`.app` so that the rules on binding (no plaintext on a
non-loopback address unless asked) are testable without starting a server.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import config_from_dict
from ..data import ImageTransform, build_datasets
from ..errors import ConfigError
from ..rundir import load_producer, read_run_json
from .keys import KEYS_DATABASE, KeyStore
from .listen import check_port, check_positive, check_tls, listen_socket, uvicorn_server
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
    "access_log_to_stderr",
    "build_service",
    "check_bind",
    "check_limits",
    "check_listen",
    "free_port",
    "key_store",
    "open_listener",
    "serve_forever",
]

KEYS_FILE = KEYS_DATABASE  # keys.sqlite (a keys.json beside it is migrated)
SPLITS = ("train", "val", "test")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for servers whose URL must be known up front)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def key_store(run_dir: str | Path, notify: Callable[[str], object] | None = None) -> KeyStore:
    """The run's consumer keys (``RUN_DIR/keys.sqlite``, CONTRACT: run dir).

    ``notify`` is told, once, when opening the store migrated the run's ``keys.json``.
    """
    read_run_json(run_dir)  # a clear error when this is not a run dir
    store = KeyStore(Path(run_dir) / KEYS_FILE)
    if store.migrated and notify is not None:
        notify(store.migrated)
    return store


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
    notify: Callable[[str], object] | None = None,
) -> ProducerService:
    """The service for a run dir: its producer, its keys and the chosen inputs
    (``notify``: as for :func:`key_store`)."""
    run_dir = Path(run_dir)
    return ProducerService(
        load_producer(run_dir),
        _source(run_dir, source, data_root),
        key_store(run_dir, notify),
        max_ids=max_ids,
        run_record=read_run_json(run_dir),
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
    if not host.strip():  # "" would bind every interface
        raise ConfigError("--host '' is empty: expected an address such as 127.0.0.1")
    if not _is_loopback(host) and not tls and not insecure:
        raise ConfigError(
            f"refusing to serve plaintext HTTP on {host}: give --ssl-certfile and "
            "--ssl-keyfile, bind 127.0.0.1, or pass --insecure"
        )


def check_limits(*, max_concurrency: int, max_ids: int, max_body_bytes: int) -> None:
    """``serve``'s limits: each at least 1 (0 would refuse every request or item)."""
    check_positive(max_concurrency, "--max-concurrency")
    check_positive(max_ids, "--max-ids")
    check_positive(max_body_bytes, "--max-body-bytes")


def check_listen(
    host: str,
    port: int,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    insecure: bool = False,
    metrics_port: int | None = None,
) -> None:
    """Every listening option that can be checked without binding.

    Raises:
        ConfigError: half or unloadable TLS files, plaintext on a public address,
            a port out of range, ``--metrics-port`` equal to ``--port``.
    """
    check_tls(ssl_certfile, ssl_keyfile)
    check_bind(host, tls=ssl_certfile is not None, insecure=insecure)
    check_port(port, "--port", any_port=True)
    if metrics_port is not None:
        check_port(metrics_port, "--metrics-port")
        if metrics_port == port:
            raise ConfigError(f"--metrics-port {metrics_port} must differ from --port {port}")


def open_listener(
    host: str, port: int, *, metrics_port: int | None = None, metrics_registry: Any = None
) -> socket.socket:
    """The API's listening socket, and the metrics server on ``metrics_port`` when given.

    Raises:
        ConfigError: either port is in use (or ``host`` is no address here).
    """
    sock = listen_socket(host, port)
    if metrics_port is not None:
        try:
            _start_metrics(host, metrics_port, metrics_registry)
        except ConfigError:
            sock.close()
            raise
    return sock


def _start_metrics(host: str, port: int, registry: Any) -> None:
    from prometheus_client import start_http_server

    listen_socket(host, port, flag="--metrics-port").close()  # the same clear errors
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # taken in the instant since the check
        raise ConfigError(f"--metrics-port {port}: {exc.strerror or exc}") from exc


def access_log_to_stderr() -> None:
    """The access log's lines on stderr, each once."""
    from .app import ACCESS_LOG

    access = logging.getLogger(ACCESS_LOG)
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
    access.setLevel(logging.INFO)
    # Not also through the root logger's handler (opacus calls logging.basicConfig),
    # which wrote every line a second time with an "INFO:" prefix.
    access.propagate = False


def serve_forever(
    app: Any,
    sock: socket.socket,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Run ``app`` with uvicorn on the socket of :func:`open_listener` until interrupted."""
    host, port = sock.getsockname()[:2]
    access_log_to_stderr()
    server = uvicorn_server(
        app, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
    )
    server.run(sockets=[sock])
