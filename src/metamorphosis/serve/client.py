"""Consumer SDK: fetch one task's features from a producer service.

    from metamorphosis.serve.client import ConsumerClient
    with ConsumerClient("http://127.0.0.1:8000", task="smile", key=secret) as client:
        ids = client.items(limit=32)["ids"]
        scope = client.privacy()["scope"]             # what epsilon and the release cover
        features, ids = client.features(ids)          # N×C×H×W float32
        for features, ids in client.iter_features(batch_size=64):
            ...

Bodies are decoded with :func:`~.codec.decode_tensors` (safetensors, never
pickle). HTTP errors become :class:`ServiceError` carrying the status code.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx
from torch import Tensor, nn

from ..errors import MetaMorphosisError
from ..train.split import Consumer
from .codec import MEDIA_TYPE, decode_tensors, encode_tensors

if TYPE_CHECKING:
    from ..train.remote import ConsumerSide

STATE_HEADER = "X-Training-State"  # as in .training (not imported: the client needs no server)
_Params = dict[str, Any] | httpx.QueryParams | None

__all__ = ["AsyncConsumerClient", "ConsumerClient", "ServiceError"]


def _tls(verify: bool | str) -> bool | ssl.SSLContext:
    """``True``/``False``, or a CA bundle path turned into the context httpx wants."""
    if not isinstance(verify, str):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:  # missing, unreadable or not PEM
        detail = getattr(exc, "strerror", None) or exc
        raise MetaMorphosisError(
            f"CA bundle {verify!r} cannot be loaded ({detail}): expected PEM certificates"
        ) from exc


def _id_params(ids: Sequence[str], encoding: str, compression: str) -> httpx.QueryParams:
    # One `id` per item: an id may hold a comma (CSV image names), which the
    # comma-separated `ids=` form cannot carry.
    pairs = (*(("id", i) for i in ids), ("encoding", encoding), ("compression", compression))
    return httpx.QueryParams(pairs)


class ServiceError(MetaMorphosisError):
    """The service refused a request (``status`` = HTTP status) or was unreachable (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class ConsumerClient:
    """A consumer of one task, holding that task's key.

    Args:
        url: the service's base URL.
        task: the subscribed task.
        key: the consumer key (``mmk_…``), sent as a bearer token.
        timeout: seconds per request.
        verify: TLS verification (a CA bundle path, or False for tests only).
    """

    def __init__(
        self, url: str, *, task: str, key: str, timeout: float = 30.0, verify: bool | str = True
    ) -> None:
        self.task = task
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            verify=_tls(verify),
        )

    def __enter__(self) -> ConsumerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def schema(self) -> dict[str, Any]:
        return self._get_json(f"/v1/tasks/{self.task}/schema")

    def privacy(self) -> dict[str, Any]:
        """The task's privacy record: ``epsilon``, ``delta``, ``private_heads``, ``scope``
        (what they cover, in words), the release noise ``sigma`` and its ``dfil`` bound."""
        return self._get_json(f"/v1/tasks/{self.task}/privacy")

    def items(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return self._get_json(
            f"/v1/tasks/{self.task}/items", params={"offset": offset, "limit": limit}
        )

    def features(
        self, ids: Sequence[str], *, encoding: str = "float32", compression: str = "none"
    ) -> tuple[Tensor, list[str]]:
        """Features of ``ids`` (float32, dequantised) and the ids the producer answered for."""
        response = self._get(
            f"/v1/tasks/{self.task}/features", _id_params(ids, encoding, compression)
        )
        tensors, metadata = decode_tensors(response.content, compression=compression)
        return tensors["features"], json.loads(metadata["ids"])

    def iter_features(
        self,
        *,
        batch_size: int = 64,
        limit: int | None = None,
        encoding: str = "float32",
        compression: str = "none",
    ) -> Iterator[tuple[Tensor, list[str]]]:
        """Every item's features (or the first ``limit``), ``batch_size`` at a time, in order."""
        offset = 0
        while limit is None or offset < limit:
            size = batch_size if limit is None else min(batch_size, limit - offset)
            page = self.items(offset=offset, limit=size)
            if not page["ids"]:
                return
            yield self.features(page["ids"], encoding=encoding, compression=compression)
            offset += len(page["ids"])

    def train(
        self,
        consumer: Consumer | ConsumerSide,
        labels_of: Callable[[list[str]], Tensor],
        *,
        poll: float = 0.02,
        idle_timeout: float = 600.0,
        unreachable_timeout: float = 120.0,
    ) -> int:
        """Be this task's consumer in split-learning training until the producer finishes.

        Each step: fetch the pending features, compute the loss on this
        consumer's own labels (``labels_of(ids)``), update the head, send
        ``d loss / d features`` back. When the producer asks for the trained
        head (state ``finishing``) it is sent and the loop ends. A step that
        carries DP-SGD settings (``privacy.private_heads``) steps the head with
        them (:class:`~metamorphosis.train.remote.ConsumerSide`).

        The producer may be unreachable for up to ``unreachable_timeout``
        seconds at a time (not started yet, restarting from its checkpoint).
        A step whose gradient did not get through is offered again; its
        gradient is resent without stepping the head a second time.

        Returns:
            The number of steps answered.
        """
        from ..train.remote import ConsumerSide, head_dp_from_text  # Opacus: training only

        side = consumer if isinstance(consumer, ConsumerSide) else ConsumerSide(consumer)
        answered = 0
        sent: tuple[str, bytes] | None = None  # the last step this head took, and its gradient
        progress = unreachable_since = time.monotonic()
        while True:
            try:
                response = self._post(f"/v1/tasks/{self.task}/train/next")
            except ServiceError as exc:
                if exc.status != 0 or time.monotonic() - unreachable_since > unreachable_timeout:
                    raise
                time.sleep(min(1.0, 10 * poll))
                continue
            unreachable_since = time.monotonic()
            state = response.headers.get(STATE_HEADER, "")
            if response.status_code == 204:
                if state in ("finishing", "done"):
                    if state == "finishing":
                        self._send_head(side.finish())
                    return answered
                if time.monotonic() - progress > idle_timeout:
                    raise ServiceError(0, f"no training step for {idle_timeout:g} s")
                time.sleep(poll)
                continue
            tensors, metadata = decode_tensors(response.content)
            step_id = metadata["step_id"]
            if sent is None or sent[0] != step_id:
                labels = labels_of(json.loads(metadata["ids"]))
                dp = head_dp_from_text(metadata.get("dp"))
                reply = side.step(tensors["features"], labels, dp)
                body = encode_tensors({"grad": reply.grad}, metadata={"loss": repr(reply.loss)})
                sent = (step_id, body)
                answered += 1
            try:
                self._post(f"/v1/tasks/{self.task}/train/steps/{step_id}/grad", sent[1])
            except ServiceError as exc:
                # 409: the producer has moved on. 0: lost on the way; the next
                # poll says whether it arrived (a new step) or not (the same one).
                if exc.status not in (0, 409):
                    raise
            progress = time.monotonic()

    def _send_head(self, head: nn.Module) -> None:
        state = {k: v for k, v in head.state_dict().items() if v.is_floating_point()}
        self._post(f"/v1/tasks/{self.task}/train/head", encode_tensors(state))

    def _post(self, path: str, body: bytes = b"") -> httpx.Response:
        try:
            response = self._http.post(path, content=body, headers={"Content-Type": MEDIA_TYPE})
        except httpx.HTTPError as exc:
            raise ServiceError(0, f"cannot reach {self._http.base_url}: {exc}") from exc
        self._raise_for(response)
        return response

    def _get_json(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._get(path, params).json()

    def _get(self, path: str, params: _Params = None) -> httpx.Response:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:  # refused, timed out, TLS failure: status 0
            raise ServiceError(0, f"cannot reach {self._http.base_url}: {exc}") from exc
        self._raise_for(response)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code >= 400:
            try:
                detail = response.json()
            except ValueError:
                detail = response.text[:200]
            raise ServiceError(response.status_code, str(detail))


class AsyncConsumerClient:
    """The asyncio twin of :class:`ConsumerClient` (same arguments, awaitable methods).

    Useful when one consumer process fetches several tasks' streams, or
    overlaps fetching with its own model's work.
    """

    def __init__(
        self, url: str, *, task: str, key: str, timeout: float = 30.0, verify: bool | str = True
    ) -> None:
        self.task = task
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            verify=_tls(verify),
        )

    async def __aenter__(self) -> AsyncConsumerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def schema(self) -> dict[str, Any]:
        return (await self._get(f"/v1/tasks/{self.task}/schema")).json()

    async def privacy(self) -> dict[str, Any]:
        """As :meth:`ConsumerClient.privacy`."""
        return (await self._get(f"/v1/tasks/{self.task}/privacy")).json()

    async def items(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        params = {"offset": offset, "limit": limit}
        return (await self._get(f"/v1/tasks/{self.task}/items", params)).json()

    async def features(
        self, ids: Sequence[str], *, encoding: str = "float32", compression: str = "none"
    ) -> tuple[Tensor, list[str]]:
        """As :meth:`ConsumerClient.features`."""
        params = _id_params(ids, encoding, compression)
        response = await self._get(f"/v1/tasks/{self.task}/features", params)
        tensors, metadata = decode_tensors(response.content, compression=compression)
        return tensors["features"], json.loads(metadata["ids"])

    async def _get(self, path: str, params: _Params = None) -> httpx.Response:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ServiceError(0, f"cannot reach {self._http.base_url}: {exc}") from exc
        ConsumerClient._raise_for(response)
        return response
