"""FastAPI adapter of :class:`~.service.ProducerService` (CONTRACT: producer service).

The only place that knows HTTP: routes, status codes (mapped from the
service's errors in :func:`_error_response`), the request size and
concurrency limits, the structured access log and the Prometheus metrics.
Secrets never reach the log: it records the key id, not the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Header, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import ClientDisconnect

from ..data import UnknownItemError
from ..errors import MetaMorphosisError
from ..train.remote import StaleStep
from .codec import COMPRESSIONS, ENCODINGS, MEDIA_TYPE, CodecError, check_choice
from .keys import AuthError, KeyFileError
from .service import Forbidden, NoPrivacyRecord, ProducerService, RequestError, UnreadableItem

__all__ = [
    "BODY_TIMEOUT",
    "BodyTimeout",
    "BodyTooLarge",
    "base_app",
    "create_app",
    "ACCESS_LOG",
    "WS_UNAUTHORIZED",
    "WS_FORBIDDEN",
    "WS_INVALID",
    "WS_INTERNAL_ERROR",
    "WS_TRY_AGAIN_LATER",
]

ACCESS_LOG = "metamorphosis.access"
#: WebSocket close codes of the stream (4000-4999 is the application range).
WS_UNAUTHORIZED, WS_FORBIDDEN, WS_INVALID = 4401, 4403, 4422
#: The standard codes (RFC 6455 / IANA) for an unreadable item and for every slot taken.
WS_INTERNAL_ERROR, WS_TRY_AGAIN_LATER = 1011, 1013
#: Seconds a request's whole body has, from its headers, to arrive.
BODY_TIMEOUT = 30.0
_log = logging.getLogger(ACCESS_LOG)
#: Answered without a concurrency slot: a busy server is still alive and ready.
_HEALTH_ROUTES = ("/healthz", "/readyz")


class BodyTooLarge(MetaMorphosisError):
    """A request body grew past the limit while it streamed in (413)."""


class BodyTimeout(MetaMorphosisError):
    """A request body was still arriving when its deadline passed (408)."""


def _unreadable(exc: UnreadableItem) -> str:
    """Log why an item cannot be read (the operator's data); return what the consumer is told."""
    _log.error("cannot read item %r: %s", exc.item_id, exc.cause)  # one line, no traceback
    return str(exc)  # names the item id, never the server's path


def _error_response(exc: Exception) -> JSONResponse | None:
    """The one mapping from service errors to HTTP answers (None: not ours)."""
    if isinstance(exc, BodyTooLarge):
        return JSONResponse({"error": "body too large"}, status_code=413)
    if isinstance(exc, BodyTimeout):  # the rest of the body may still come: not this connection
        detail = {"error": "request timeout", "detail": str(exc)}
        return JSONResponse(detail, status_code=408, headers={"Connection": "close"})
    if isinstance(exc, ClientDisconnect):  # nobody to answer: 499 (nginx's) for the access log
        return JSONResponse({"error": "client closed request"}, status_code=499)
    if isinstance(exc, UnreadableItem):  # the producer's data, not the request: a 5xx
        detail = {"error": "unreadable item", "detail": _unreadable(exc)}
        return JSONResponse(detail, status_code=500)
    if isinstance(exc, AuthError):  # one answer for every reason: nothing to probe
        return JSONResponse(
            {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
    if isinstance(exc, Forbidden):
        return JSONResponse({"error": "forbidden"}, status_code=403)
    if isinstance(exc, (UnknownItemError, NoPrivacyRecord)):
        return JSONResponse({"error": "not found", "detail": str(exc)}, status_code=404)
    if isinstance(exc, (RequestError, CodecError)):
        return JSONResponse({"error": "invalid request", "detail": str(exc)}, status_code=422)
    if isinstance(exc, StaleStep):
        return JSONResponse({"error": "conflict", "detail": str(exc)}, status_code=409)
    if isinstance(exc, KeyFileError):  # the operator's problem: logged, no detail to the client
        _log.error("key store unreadable: %s", exc)
        return JSONResponse({"error": "key store unavailable"}, status_code=503)
    return None


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "metamorphosis_requests_total",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "metamorphosis_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            registry=self.registry,
        )
        self.feature_bytes = Counter(
            "metamorphosis_feature_bytes_total",
            "Feature bytes served by task.",
            ["task"],
            registry=self.registry,
        )


class _BodyGuard:
    """Bounds every request body in size and in time as it streams in.

    Size: a chunked body carries no Content-Length, so the header check alone let
    any size through to ``request.body()``; past ``max_bytes`` the next read
    raises :class:`BodyTooLarge`, answered 413.

    Time: the whole body must arrive within ``timeout`` seconds of the headers
    (uvicorn calls the app as soon as they are parsed), else the read raises
    :class:`BodyTimeout`, answered 408 with ``Connection: close``. A deadline on
    the whole body, not an idle timeout between chunks: one byte every few
    seconds would reset an idle timer forever, and the total is what bounds how
    long a slow upload holds a concurrency slot. Here in the app rather than in
    the h11 protocol, so that the 408 takes the normal path (error mapping,
    access log, metrics, the slot released) instead of being written behind the
    app's back.
    """

    def __init__(self, app: Any, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(receive, self.max_bytes, self.timeout)
        await self.app(scope, body.receive, send)


class _Body:
    """One request's body reads: counted against the size limit, due before the deadline."""

    def __init__(self, receive: Any, max_bytes: int, timeout: float) -> None:
        self._receive = receive
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._seen = 0
        self._complete = False

    async def receive(self) -> Any:
        if self._complete:  # later reads wait for a disconnect while the answer goes out
            return await self._receive()
        message = await self._next()
        self._complete = not message.get("more_body", False)  # http.disconnect has none
        self._seen += len(message.get("body", b""))
        if self._seen > self._max_bytes:
            raise BodyTooLarge(f"request body over {self._max_bytes} bytes")
        return message

    async def _next(self) -> Any:
        left = max(self._deadline - time.monotonic(), 0.0)
        try:
            return await asyncio.wait_for(self._receive(), left)
        except asyncio.TimeoutError:
            raise BodyTimeout(
                f"the request body did not arrive within {self._timeout:g} s"
            ) from None


class _StreamSlots:
    """An open WebSocket holds a concurrency slot for as long as it lasts, as a request does.

    Streams used to take none, so any number of them ran beside ``max_concurrency``
    requests. With every slot taken the handshake is accepted and closed at once
    with 1013 (try again later): refusing the handshake itself reaches the client
    as an HTTP 403, which reads as a key problem.
    """

    def __init__(self, app: Any, slots: asyncio.Semaphore) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
        elif self.slots.locked():
            await _close_busy(scope, receive, send)
        else:
            async with self.slots:
                await self.app(scope, receive, send)


async def _close_busy(scope: Any, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect: the ASGI handshake comes before the accept
    await send({"type": "websocket.accept"})
    reason = "server busy: try again later"
    await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER, "reason": reason})
    _log.info(json.dumps({"path": scope["path"], "close": WS_TRY_AGAIN_LATER}))


def _declared_too_large(request: Request, max_bytes: int) -> bool:
    length = request.headers.get("content-length")
    return length is not None and (not length.isdigit() or int(length) > max_bytes)


def base_app(
    *, max_body_bytes: int, max_concurrency: int, body_timeout: float = BODY_TIMEOUT
) -> FastAPI:
    """An app with the limits, access log, metrics, error mapping and health routes.

    ``max_concurrency`` bounds requests and open WebSocket streams together;
    ``body_timeout`` is the seconds a request's whole body has to arrive.
    ``app.state.metrics`` holds the metrics (its ``registry`` is what the
    metrics port serves).

    Raises:
        ValueError: a limit below 1 (0 would answer every request 503 or 413),
            a ``body_timeout`` that is not a finite number > 0.
    """
    if max_body_bytes < 1 or max_concurrency < 1:
        raise ValueError(f"{max_body_bytes=} and {max_concurrency=} must be >= 1")
    if not (math.isfinite(body_timeout) and body_timeout > 0):
        raise ValueError(f"{body_timeout=} must be a finite number of seconds > 0")
    app = FastAPI(title="metamorphosis producer", version="1")
    metrics = _Metrics()
    app.state.metrics = metrics
    slots = asyncio.Semaphore(max_concurrency)
    app.add_middleware(_BodyGuard, max_bytes=max_body_bytes, timeout=body_timeout)
    app.add_middleware(_StreamSlots, slots=slots)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        started = time.perf_counter()
        route = _route_of(request)
        if _declared_too_large(request, max_body_bytes):
            response: Response = JSONResponse({"error": "body too large"}, status_code=413)
        elif route in _HEALTH_ROUTES:
            response = await call_next(request)
        elif slots.locked():
            response = JSONResponse({"error": "busy"}, status_code=503)
        else:
            async with slots:
                response = await call_next(request)
        seconds = time.perf_counter() - started
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        _access_log(request, response.status_code, seconds)
        return response

    @app.exception_handler(Exception)
    async def _errors(request: Request, exc: Exception) -> Response:
        mapped = _error_response(exc)
        if mapped is None:
            _log.exception("unhandled error on %s", request.url.path)
            return JSONResponse({"error": "internal error"}, status_code=500)
        return mapped

    for error in (
        AuthError,
        Forbidden,
        UnknownItemError,
        NoPrivacyRecord,
        RequestError,
        CodecError,
        KeyFileError,
        BodyTooLarge,
        BodyTimeout,
        ClientDisconnect,
        UnreadableItem,
        StaleStep,
    ):
        app.add_exception_handler(error, _errors)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def create_app(
    service: ProducerService,
    *,
    max_body_bytes: int = 64 * 2**20,
    max_concurrency: int = 8,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    """The ASGI app serving ``service``'s features (CONTRACT: producer service)."""
    app = base_app(
        max_body_bytes=max_body_bytes, max_concurrency=max_concurrency, body_timeout=body_timeout
    )
    metrics = app.state.metrics

    @app.get("/v1/tasks/{task}/schema")
    def schema(request: Request, task: str, authorization: str | None = Header(None)):
        request.state.key_id = service.authorize(authorization, task).key_id
        return service.schema(task)

    @app.get("/v1/tasks/{task}/privacy")
    def privacy(
        request: Request, task: str, authorization: str | None = Header(None)
    ) -> dict[str, Any]:
        """What the run's epsilon and this task's released features are protected by."""
        request.state.key_id = service.authorize(authorization, task).key_id
        return service.privacy(task)

    @app.get("/v1/tasks/{task}/items")
    def items(
        request: Request,
        task: str,
        offset: int = Query(0),
        limit: int = Query(100),
        authorization: str | None = Header(None),
    ) -> dict[str, Any]:
        request.state.key_id = service.authorize(authorization, task).key_id
        return service.item_ids(offset, limit)

    @app.get(
        "/v1/tasks/{task}/features",
        response_class=Response,
        responses={200: {"content": {MEDIA_TYPE: {}}}},
    )
    def features(
        request: Request,
        task: str,
        ids: str | None = Query(None, description="comma-separated item ids (none with a comma)"),
        item_ids: list[str] | None = Query(
            None, alias="id", description="one item id per `id`, repeated; any characters"
        ),
        encoding: str = Query("float32"),
        compression: str = Query("none"),
        authorization: str | None = Header(None),
    ) -> Response:
        request.state.key_id = service.authorize(authorization, task).key_id
        wanted = _wanted_ids(ids, item_ids)
        body = service.features(task, wanted, encoding=encoding, compression=compression)
        metrics.feature_bytes.labels(task).inc(len(body))
        return Response(body, media_type=MEDIA_TYPE)

    @app.websocket("/v1/tasks/{task}/stream")
    async def stream(
        websocket: WebSocket,
        task: str,
        batch_size: str = "16",
        encoding: str = "float32",
        compression: str = "none",
    ) -> None:
        """One safetensors message per batch of items, in order; then a normal close.

        ``batch_size`` is parsed here, not by FastAPI: its validation error would
        refuse the handshake (HTTP 403) instead of closing with 4422 and a reason.
        """
        await websocket.accept()
        try:
            record = service.authorize(websocket.headers.get("authorization"), task)
            batches = service.id_batches(_batch_size(batch_size))
            check_choice("encoding", encoding, ENCODINGS)
            check_choice("compression", compression, COMPRESSIONS)
        except AuthError:
            await websocket.close(code=WS_UNAUTHORIZED)
            return
        except Forbidden:
            await websocket.close(code=WS_FORBIDDEN)
            return
        except (RequestError, CodecError) as exc:
            await websocket.close(code=WS_INVALID, reason=_close_reason(exc))
            return
        started = time.perf_counter()
        for ids in batches:
            try:
                body = await run_in_threadpool(
                    service.features, task, ids, encoding=encoding, compression=compression
                )
            except (RequestError, CodecError) as exc:
                await websocket.close(code=WS_INVALID, reason=_close_reason(exc))
                return
            except UnreadableItem as exc:
                reason = _close_reason(_unreadable(exc))
                await websocket.close(code=WS_INTERNAL_ERROR, reason=reason)
                return
            metrics.feature_bytes.labels(task).inc(len(body))
            await websocket.send_bytes(body)
        await websocket.close()
        seconds = time.perf_counter() - started
        entry = {"stream": task, "key_id": record.key_id, "batches": len(batches)}
        _log.info(json.dumps({**entry, "ms": round(1000 * seconds, 2)}))

    return app


def _wanted_ids(ids: str | None, item_ids: list[str] | None) -> list[str]:
    """``id`` repeated (one id each, commas allowed) or ``ids`` comma-separated; not both."""
    if ids is not None and item_ids:
        raise RequestError("give the items as repeated id= or as ids=a,b,c, not both")
    if item_ids:
        return item_ids
    return [i for i in (ids or "").split(",") if i]


def _close_reason(exc: Exception | str) -> str:
    # A close frame's reason holds at most 123 bytes of UTF-8.
    return str(exc).encode()[:123].decode(errors="ignore")


def _batch_size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RequestError(f"batch_size must be an integer, got {text[:20]!r}") from None


_TASK_ROUTES = ("schema", "privacy", "items", "features", "stream")


def _route_of(request: Request) -> str:
    """The route template (``/v1/tasks/{task}/features``) or ``other``: bounded labels."""
    path = request.url.path
    if path in ("/healthz", "/readyz"):
        return path
    parts = path.split("/")
    if len(parts) == 5 and parts[1:3] == ["v1", "tasks"] and parts[4] in _TASK_ROUTES:
        return f"/v1/tasks/{{task}}/{parts[4]}"
    if (
        len(parts) == 6
        and parts[1:3] == ["v1", "tasks"]
        and parts[4:] in (["train", "next"], ["train", "head"])
    ):
        return f"/v1/tasks/{{task}}/train/{parts[5]}"
    if len(parts) == 8 and parts[1:3] == ["v1", "tasks"] and parts[4:6] == ["train", "steps"]:
        return "/v1/tasks/{task}/train/steps/{step_id}/grad" if parts[7] == "grad" else "other"
    return "other"


def _access_log(request: Request, status: int, seconds: float) -> None:
    """One JSON line per request: no headers, no query values, never a secret."""
    record = {
        "method": request.method,
        "path": request.url.path,
        "status": status,
        "ms": round(1000 * seconds, 2),
        "key_id": getattr(request.state, "key_id", None),
        "client": request.client.host if request.client else None,
    }
    _log.info(json.dumps(record))
