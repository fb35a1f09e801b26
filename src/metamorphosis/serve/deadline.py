"""The request-header deadline uvicorn lacks, as a module-level protocol class.

Module level so that ``serve --workers N`` can name it by import path
(``metamorphosis.serve.deadline:HeaderDeadlineProtocol``): uvicorn pickles its config
into every worker process, and a class made inside a function does not pickle.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from .timeouts import HEADER_TIMEOUT

__all__ = ["PROTOCOL_PATH", "HeaderDeadlineProtocol", "with_timeout"]

PROTOCOL_PATH = "metamorphosis.serve.deadline:HeaderDeadlineProtocol"


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take over
    ``header_timeout`` seconds (a class attribute: uvicorn instantiates the class)."""

    header_timeout = HEADER_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._watch_headers()  # a client that connects and sends nothing

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        # uvicorn starts a request's cycle once its line and headers are parsed;
        # after an upgrade the transport belongs to the WebSocket protocol.
        idle = self.cycle is None or self.cycle.response_complete
        mine = self.transport.get_protocol() is self
        return idle and mine and not self.transport.is_closing()

    def _watch_headers(self) -> None:
        # Between requests uvicorn's keep-alive timeout closes idle connections;
        # the deadline starts with a connection or with the next request's bytes.
        if not self._awaiting_headers():
            self._stop_watch()
        elif self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_watch(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._awaiting_headers():
            self.transport.close()


def with_timeout(timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol with another deadline (tests use short ones)."""
    if timeout == HEADER_TIMEOUT:
        return HeaderDeadlineProtocol
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": timeout})
