"""Deadlines shared by the listener and its h11 protocol (a module of its own, so that
neither imports the other)."""

from __future__ import annotations

__all__ = ["HEADER_TIMEOUT"]

#: Seconds a client has to send a request's line and headers (uvicorn has no such limit).
HEADER_TIMEOUT = 10.0
