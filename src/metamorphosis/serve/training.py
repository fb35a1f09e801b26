"""Split-learning training over HTTP: the routes between remote consumers and the hub.

``metamorphosis train CONFIG --out RUN_DIR --remote`` serves these while the
producer trains (CONTRACT: producer service, split-learning training):

* ``POST /v1/tasks/{task}/train/next`` → the pending step's features
  (safetensors ``features``; ``step_id`` and the item ``ids`` in its
  metadata, and under ``privacy.private_heads`` ``dp``: the JSON object
  ``{"noise_multiplier", "max_grad_norm", "expected_batch_size"}`` of the
  DP-SGD step the head must take), or 204 when nothing is pending; the
  ``X-Training-State`` header says ``training``, ``finishing`` (send your
  head) or ``done``;
* ``POST /v1/tasks/{task}/train/steps/{step_id}/grad`` with safetensors
  ``grad`` (and ``loss`` in the metadata) → 202; 409 for a stale or replayed
  step; 422 for a wrong shape, dtype or a non-finite value;
* ``POST /v1/tasks/{task}/train/head`` with the head's state dict → 202, once,
  when the state is ``finishing`` (the run's evaluation needs the heads).
"""

from __future__ import annotations

import json
import math
import threading
import time

from fastapi import FastAPI, Header, Request
from fastapi.responses import Response

from ..train.remote import StaleStep, TrainingHub, head_dp_to_text
from .app import BODY_TIMEOUT, base_app
from .codec import MEDIA_TYPE, CodecError, check_gradient, decode_tensors, encode_tensors
from .keys import KeyStore
from .listen import HEADER_TIMEOUT, check_tls, listen_socket, url_of, uvicorn_server
from .service import authorize

__all__ = ["STATE_HEADER", "create_training_app", "TrainingServer"]

STATE_HEADER = "X-Training-State"  # also spelled out in .client, which must not import uvicorn


def create_training_app(
    hub: TrainingHub,
    keys: KeyStore,
    *,
    max_body_bytes: int = 64 * 2**20,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    """The routes remote consumers train through (one per public task in ``hub.tasks``)."""
    app = base_app(
        max_body_bytes=max_body_bytes,
        max_concurrency=4 * len(hub.tasks) + 4,
        body_timeout=body_timeout,
    )

    def check(request: Request, authorization: str | None, task: str) -> None:
        request.state.key_id = authorize(keys, hub.tasks, authorization, task).key_id

    @app.post("/v1/tasks/{task}/train/next", response_class=Response)
    def next_step(request: Request, task: str, authorization: str | None = Header(None)):
        check(request, authorization, task)
        step = hub.next_step(task)
        if step is None:
            return Response(status_code=204, headers={STATE_HEADER: hub.state})
        metadata = {"step_id": step.step_id, "ids": json.dumps(step.ids)}
        if step.dp is not None:
            metadata["dp"] = head_dp_to_text(step.dp)
        body = encode_tensors({"features": step.features}, metadata=metadata)
        return Response(body, media_type=MEDIA_TYPE, headers={STATE_HEADER: hub.state})

    @app.post("/v1/tasks/{task}/train/steps/{step_id}/grad", status_code=202)
    async def gradient(
        request: Request, task: str, step_id: str, authorization: str | None = Header(None)
    ) -> dict[str, str]:
        check(request, authorization, task)
        step = hub.next_step(task)
        if step is None or step.step_id != step_id:
            raise StaleStep(f"step {step_id!r} is not pending for task {task!r}")
        tensors, metadata = decode_tensors(await request.body(), max_bytes=max_body_bytes)
        if set(tensors) != {"grad"}:
            raise CodecError(f"expected one tensor named 'grad', got {sorted(tensors)}")
        grad = check_gradient(tensors["grad"], shape=step.features.shape)
        loss = _finite_float(metadata.get("loss"))
        hub.answer(task, step_id, grad, loss)  # re-checked under the hub's lock
        return {"status": "accepted"}

    @app.post("/v1/tasks/{task}/train/head", status_code=202)
    async def head(
        request: Request, task: str, authorization: str | None = Header(None)
    ) -> dict[str, str]:
        check(request, authorization, task)
        tensors, _ = decode_tensors(await request.body(), max_bytes=max_body_bytes)
        hub.post_head(task, tensors)
        return {"status": "accepted"}

    return app


def _finite_float(text: str | None) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CodecError(f"metadata 'loss' must be a finite number, got {text!r}")
    return value


class TrainingServer:
    """The training routes on a background uvicorn thread, for the length of a run.

    The port is bound and the TLS files are loaded when it is constructed, so a
    busy port or a bad certificate is a :class:`~metamorphosis.errors.ConfigError`
    before anything runs (``port=0``: a free port, see :attr:`url`).
    """

    def __init__(
        self,
        hub: TrainingHub,
        keys: KeyStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = 64 * 2**20,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        check_tls(ssl_certfile, ssl_keyfile)
        self._socket = listen_socket(host, port)
        port = self._socket.getsockname()[1]
        self.url = url_of(self._socket, host, tls=ssl_certfile is not None)
        self._server = uvicorn_server(
            create_training_app(
                hub, keys, max_body_bytes=max_body_bytes, body_timeout=body_timeout
            ),
            host=host,
            port=port,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            header_timeout=header_timeout,
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> TrainingServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the training server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
