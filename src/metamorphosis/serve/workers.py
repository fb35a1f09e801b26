"""``metamorphosis serve RUN_DIR --workers N``: N uvicorn worker processes behind one port.

The parent checks every option, builds the service once (so a bad run dir, source or
key store is one clear error before anything starts, and a ``keys.json`` is migrated
once, not raced by N workers), binds the socket, then hands it to uvicorn's
multiprocess supervisor. uvicorn starts each worker with ``spawn`` and pickles its
config into it, so a worker builds its own app from an import string
(:func:`app_from_environment`, a factory) and :data:`SETTINGS_ENV`, which the parent
sets. The kernel spreads connections over the workers' ``accept`` calls.

What the workers share is on disk: the run dir (read-only), the SQLite key store
(every request reads the committed state, so a ``keys revoke`` from any process is
refused by every worker at its next request) and the Prometheus values
(prometheus-client's multiprocess mode: each worker writes its own files in
:data:`MULTIPROC_ENV`'s folder and the parent's metrics port sums them).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "APP_FACTORY",
    "MAX_WORKERS",
    "MULTIPROC_ENV",
    "SETTINGS_ENV",
    "WorkerSettings",
    "app_from_environment",
    "check_workers",
    "metrics_folder",
    "multiprocess_registry",
    "serve_workers",
]

SETTINGS_ENV = "METAMORPHOSIS_SERVE_SETTINGS"
#: prometheus-client reads this when it is imported: set before any worker starts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
APP_FACTORY = "metamorphosis.serve.workers:app_from_environment"
#: More is a typo on any machine this runs on (each worker holds the producer).
MAX_WORKERS = 64
# What prometheus-client's multiprocess mode writes: one file per metric type and pid.
_VALUE_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


@dataclass(frozen=True)
class WorkerSettings:
    """What each worker needs to build the same app as ``serve`` with one process."""

    run_dir: str
    source: str = "test"
    data_root: str | None = None
    max_ids: int = 256
    max_body_bytes: int = 64 * 2**20
    max_concurrency: int = 8

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> WorkerSettings:
        text = os.environ.get(SETTINGS_ENV)
        if not text:
            raise ConfigError(
                f"{SETTINGS_ENV} is not set: {APP_FACTORY} is started by "
                "`metamorphosis serve --workers N`, not on its own"
            )
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{SETTINGS_ENV} holds no valid worker settings ({exc})") from exc


def check_workers(workers: int) -> None:
    """``--workers`` is an integer from 1 to :data:`MAX_WORKERS`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"--workers {workers!r} is invalid: expected an integer from 1 to {MAX_WORKERS}"
        )


def app_from_environment() -> Any:
    """The app of one worker (uvicorn's factory): the service and limits of
    :data:`SETTINGS_ENV`, the access log on stderr."""
    from .app import create_app
    from .server import access_log_to_stderr, build_service

    settings = WorkerSettings.from_environment()
    access_log_to_stderr()
    service = build_service(
        settings.run_dir,
        source=settings.source,
        data_root=settings.data_root,
        max_ids=settings.max_ids,
    )
    return create_app(
        service,
        max_body_bytes=settings.max_body_bytes,
        max_concurrency=settings.max_concurrency,
    )


@contextlib.contextmanager
def metrics_folder() -> Iterator[Path]:
    """The folder the workers' Prometheus values go to, set in :data:`MULTIPROC_ENV`.

    The operator's folder when that variable is set (it must exist; values a previous
    run left there are removed, as prometheus-client requires), else a fresh temporary
    one, removed at exit.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        if not folder.is_dir():
            raise ConfigError(f"{MULTIPROC_ENV}={given!r} is not a folder")
        for pattern in _VALUE_FILES:
            for stale in folder.glob(pattern):
                stale.unlink(missing_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="metamorphosis-metrics-") as name:
        os.environ[MULTIPROC_ENV] = name
        try:
            yield Path(name)
        finally:
            os.environ.pop(MULTIPROC_ENV, None)


def multiprocess_registry(folder: Path) -> Any:
    """A registry that sums every worker's values in ``folder`` when scraped."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    return registry


def serve_workers(
    settings: WorkerSettings,
    sock: socket.socket,
    workers: int,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Run ``workers`` uvicorn processes on ``sock`` until interrupted (the caller holds
    :func:`metrics_folder` open around this)."""
    from uvicorn.supervisors import Multiprocess

    from .listen import uvicorn_config

    check_workers(workers)
    if MULTIPROC_ENV not in os.environ:
        raise ConfigError(f"{MULTIPROC_ENV} is not set: serve workers inside metrics_folder()")
    os.environ[SETTINGS_ENV] = settings.to_json()  # spawned workers inherit it
    host, port = sock.getsockname()[:2]
    config = uvicorn_config(
        APP_FACTORY,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        factory=True,
        workers=workers,
    )
    Multiprocess(config, sockets=[sock]).run()
