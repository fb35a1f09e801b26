"""Consumer API keys: one task per key, hashed at rest, expirable and revocable.

A secret looks like ``mmk_<key_id>_<token>``: ``key_id`` (12 hex characters) is a
public handle used to find the record, list and revoke it; ``token`` (32 random
bytes, URL-safe base64) is the secret part. ``keys.json`` in the run dir stores
only ``sha256(token)``, so reading the file does not let anyone call the API.

The producer service and the ``metamorphosis keys`` CLI are different processes
sharing that file, so :class:`KeyStore` re-reads it whenever its identity
(inode, ``mtime_ns``, size) changed: a key revoked from the CLI stops working on
the next request, without restarting the server. Writes go through
:func:`~metamorphosis.io.atomic_write`, so a reader never sees a
half-written file. Two *writers* running at the same instant could still lose
one update (there is no cross-process lock); writers are human-paced CLI calls.

Authentication failures raise :class:`AuthError` with a ``reason`` for logs;
the HTTP layer answers every reason with the same 401 body, and messages never
contain the secret.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import MetaMorphosisError, RunDirError
from ..io import atomic_write

__all__ = [
    "AUTH_REASONS",
    "MAX_TTL",
    "SECRET_PREFIX",
    "AuthError",
    "IssuedKey",
    "KeyFileError",
    "KeyNotFound",
    "KeyRecord",
    "KeyStore",
    "parse_bearer",
    "valid_task_name",
]

SECRET_PREFIX = "mmk_"
AUTH_REASONS = ("missing", "malformed", "unknown", "expired", "revoked")
FILE_VERSION = 1

KeyStatus = Literal["active", "expired", "revoked"]

_KEY_ID_BYTES = 6  # -> 12 hex characters
_TOKEN_BYTES = 32  # -> 43 URL-safe base64 characters
_KEY_ID_RE = re.compile(r"[0-9a-f]{12}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SECRET_RE = re.compile(r"mmk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_TASK_RE = re.compile(r"[A-Za-z0-9_.-]+")
_FIELDS = ("key_id", "task", "sha256", "created_at", "expires_at", "revoked_at")
#: Longest ``ttl``: 100 years (a longer one is a typo; no ttl means "until revoked").
MAX_TTL = 100 * 365.25 * 86400
# Timestamps in the file lie between the epoch and the end of year 9999, the range
# time.ctime can print (a larger one made `keys list` crash).
_MAX_TIMESTAMP = 253402300799.0
# A key file is a few hundred bytes per key; a much larger "file" is not one.
_MAX_FILE_BYTES = 16 * 2**20
# Compared against when the key id is unknown, so that an unknown id costs the
# same work as a wrong token for a known one.
_DUMMY_DIGEST = hashlib.sha256(b"metamorphosis-no-such-key").hexdigest()


def _hash_token(token: str) -> str:
    # A plain SHA-256 is enough: the token is 256 bits from `secrets`, so there
    # is nothing to brute-force and a slow password hash (bcrypt, scrypt) would
    # only add latency to every request.
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class AuthError(MetaMorphosisError):
    """A request's API key is missing, malformed, unknown, expired or revoked.

    Attributes:
        reason: One of :data:`AUTH_REASONS`, for logs (the client always sees the same 401).
        key_id: The public key id when one could be parsed, else ``None``.
    """

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        if reason not in AUTH_REASONS:
            raise ValueError(f"reason={reason!r}; allowed: {', '.join(AUTH_REASONS)}")
        self.reason = reason
        self.key_id = key_id
        subject = f"API key {key_id}" if key_id else "API key"
        super().__init__(f"authentication failed: {subject} is {reason}")


class KeyNotFound(MetaMorphosisError):
    """No key with the given id exists in the key file."""


class KeyFileError(RunDirError):
    """``keys.json`` cannot be parsed or holds invalid records."""


@dataclass(frozen=True)
class KeyRecord:
    """The public facts about one key (the hash is kept inside :class:`KeyStore`).

    Attributes:
        key_id: 12 hex characters, the public handle.
        task: The only task this key may read or train.
        created_at: Epoch seconds.
        expires_at: Epoch seconds, or ``None`` for a key that never expires.
        revoked_at: Epoch seconds of the revocation, or ``None``.
    """

    key_id: str
    task: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def status(self, now: float) -> KeyStatus:
        """``"revoked"`` wins over ``"expired"``; a key expires at ``expires_at`` exactly."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_public_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready fields (never the hash); adds ``status`` when ``now`` is given."""
        out: dict[str, Any] = {
            "key_id": self.key_id,
            "task": self.task,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }
        if now is not None:
            out["status"] = self.status(now)
        return out


@dataclass(frozen=True)
class IssuedKey:
    """A freshly issued key: ``secret`` is shown once and stored nowhere."""

    record: KeyRecord
    secret: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return (
            f"IssuedKey(record={self.record!r}, secret='{SECRET_PREFIX}{self.record.key_id}_...')"
        )


def valid_task_name(name: str) -> bool:
    """Task names are ``[A-Za-z0-9_.-]+``: safe in a URL path and in ``keys.json``."""
    return isinstance(name, str) and _TASK_RE.fullmatch(name) is not None


def parse_bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <secret>`` header, else ``None``.

    The scheme is case-insensitive (RFC 7235); any other scheme, an empty
    credential or extra words give ``None`` (which :meth:`KeyStore.authenticate`
    reports as ``"missing"``).
    """
    if not header:
        return None
    parts = header.strip().split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def _number(value: Any, *, optional: bool) -> bool:
    if value is None:
        return optional
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _timestamp(value: Any, *, optional: bool) -> bool:
    return _number(value, optional=optional) and (value is None or 0 <= value <= _MAX_TIMESTAMP)


@dataclass(frozen=True)
class _Entry:
    record: KeyRecord
    sha256: str


_WHEN = "epoch seconds (0 to year 9999)"
_RULES = (  # field, check, what is allowed
    ("key_id", lambda v: isinstance(v, str) and _KEY_ID_RE.fullmatch(v), "12 hex digits"),
    ("task", valid_task_name, "[A-Za-z0-9_.-]+"),
    ("sha256", lambda v: isinstance(v, str) and _SHA256_RE.fullmatch(v), "64 hex digits"),
    ("created_at", lambda v: _timestamp(v, optional=False), _WHEN),
    ("expires_at", lambda v: _timestamp(v, optional=True), f"{_WHEN} or null"),
    ("revoked_at", lambda v: _timestamp(v, optional=True), f"{_WHEN} or null"),
)


def _parse_record(where: str, item: Any) -> _Entry:
    """One record of ``keys.json``, every field checked (``where`` names it in errors)."""
    if not isinstance(item, dict) or set(item) != set(_FIELDS):
        raise KeyFileError(f"{where} must have exactly the fields {', '.join(_FIELDS)}")
    for name, check, allowed in _RULES:
        if not check(item[name]):
            shown = "(hidden)" if name == "sha256" else repr(item[name])[:40]
            raise KeyFileError(f"{where} has an invalid {name} {shown}: expected {allowed}")

    def when(name: str) -> float | None:
        return None if item[name] is None else float(item[name])

    record = KeyRecord(
        key_id=item["key_id"],
        task=item["task"],
        created_at=float(item["created_at"]),
        expires_at=when("expires_at"),
        revoked_at=when("revoked_at"),
    )
    return _Entry(record, item["sha256"])


class KeyStore:
    """The consumer keys of one run, backed by a JSON file (usually ``RUN_DIR/keys.json``).

    File format: ``{"version": 1, "keys": [{"key_id", "task", "sha256",
    "created_at", "expires_at", "revoked_at"}, ...]}``, mode 0600. A missing
    file means no keys; a corrupt one raises :class:`KeyFileError` rather than
    silently dropping every key (or, worse, a revocation).

    Thread-safe within a process; see the module docstring for other processes.

    Args:
        path: The key file.
        clock: Epoch-seconds clock, injectable for tests of expiry.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._signature: tuple[int, int, int] | None = None
        self._refresh()

    # -- file I/O -------------------------------------------------------------

    def _stat_signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {self.path}: {exc.strerror}") from exc
        # Not a symlink: every write replaces the link with a file, silently
        # forking the keys; not a FIFO or device, whose read could block forever.
        if stat.S_ISLNK(st.st_mode):
            raise KeyFileError(f"key file {self.path} is a symlink: it must be a regular file")
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {self.path} is not a regular file")
        if st.st_size > _MAX_FILE_BYTES:
            raise KeyFileError(f"key file {self.path} is over {_MAX_FILE_BYTES} bytes")
        # The inode changes on every atomic replace, so even two writes within one
        # mtime tick that keep the size are noticed.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self, *, force: bool = False) -> None:
        """Re-read the file if it changed since the last read (or always with ``force``)."""
        with self._lock:
            signature = self._stat_signature()
            if not force and signature == self._signature:
                return
            if signature is None:
                self._entries, self._signature = {}, None
                return
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:  # removed between stat and read
                self._entries, self._signature = {}, None
                return
            except OSError as exc:
                raise KeyFileError(f"cannot read key file {self.path}: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise KeyFileError(f"key file {self.path} is not UTF-8 text") from exc
            self._entries = self._parse(text)
            self._signature = signature

    def _parse(self, text: str) -> dict[str, _Entry]:
        where = f"key file {self.path}"
        if not text.strip():
            expected = f'{{"version": {FILE_VERSION}, "keys": [...]}}'
            raise KeyFileError(f"{where} is empty: expected {expected}")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise KeyFileError(f"{where} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
            raise KeyFileError(f'{where} must be an object with "version": {FILE_VERSION}')
        keys = data.get("keys")
        if not isinstance(keys, list):
            raise KeyFileError(f'{where} must have a "keys" list')
        entries: dict[str, _Entry] = {}
        for i, item in enumerate(keys):
            entry = _parse_record(f"{where}: keys[{i}]", item)
            if entry.record.key_id in entries:
                raise KeyFileError(f"{where}: keys[{i}] repeats key_id {entry.record.key_id!r}")
            entries[entry.record.key_id] = entry
        return entries

    def _write(self, entries: dict[str, _Entry]) -> None:
        payload = {
            "version": FILE_VERSION,
            "keys": [
                {
                    "key_id": e.record.key_id,
                    "task": e.record.task,
                    "sha256": e.sha256,
                    "created_at": e.record.created_at,
                    "expires_at": e.record.expires_at,
                    "revoked_at": e.record.revoked_at,
                }
                for e in entries.values()
            ],
        }
        text = json.dumps(payload, indent=2) + "\n"

        def write(tmp: Path) -> None:
            tmp.write_text(text, encoding="utf-8")
            os.chmod(tmp, 0o600)  # hashes only, but still nobody else's business

        atomic_write(self.path, write)
        self._entries = entries
        self._signature = self._stat_signature()

    # -- public API -----------------------------------------------------------

    def issue(self, task: str, *, ttl: float | None = None) -> IssuedKey:
        """Create a key for ``task``, valid for ``ttl`` seconds (``None``: until revoked).

        Raises:
            MetaMorphosisError: ``task`` is not a name of ``[A-Za-z0-9_.-]+`` or
                ``ttl`` is not a number of seconds in (0, :data:`MAX_TTL`].
        """
        if not valid_task_name(task):
            raise MetaMorphosisError(
                f"task={task!r} is not a valid task name (letters, digits, '_', '.', '-')"
            )
        if ttl is not None and not (_number(ttl, optional=False) and 0 < ttl <= MAX_TTL):
            raise MetaMorphosisError(
                f"ttl={ttl!r} must be a number of seconds > 0 and <= {MAX_TTL:.0f} (100 years)"
            )
        with self._lock:
            self._refresh(force=True)  # build on the latest file, not a stale cache
            key_id = secrets.token_hex(_KEY_ID_BYTES)
            while key_id in self._entries:  # pragma: no cover - 48 random bits
                key_id = secrets.token_hex(_KEY_ID_BYTES)
            token = secrets.token_urlsafe(_TOKEN_BYTES)
            now = float(self._clock())
            record = KeyRecord(
                key_id=key_id,
                task=task,
                created_at=now,
                expires_at=None if ttl is None else now + float(ttl),
            )
            entries = dict(self._entries)
            entries[key_id] = _Entry(record, _hash_token(token))
            self._write(entries)
        return IssuedKey(record=record, secret=f"{SECRET_PREFIX}{key_id}_{token}")

    def list(self) -> builtins.list[KeyRecord]:
        """Every key (active, expired and revoked), oldest first."""
        with self._lock:
            self._refresh()
            return sorted((e.record for e in self._entries.values()), key=lambda r: r.created_at)

    def get(self, key_id: str) -> KeyRecord:
        """The record of ``key_id``; :class:`KeyNotFound` when there is none."""
        with self._lock:
            self._refresh()
            entry = self._entries.get(key_id)
        if entry is None:
            raise KeyNotFound(f"no key with id {key_id!r} in {self.path}")
        return entry.record

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id`` now; revoking a revoked key changes nothing and returns it.

        Raises:
            KeyNotFound: No key has this id.
        """
        with self._lock:
            self._refresh(force=True)
            entry = self._entries.get(key_id)
            if entry is None:
                raise KeyNotFound(f"no key with id {key_id!r} in {self.path}")
            if entry.record.revoked_at is not None:
                return entry.record
            record = KeyRecord(
                key_id=entry.record.key_id,
                task=entry.record.task,
                created_at=entry.record.created_at,
                expires_at=entry.record.expires_at,
                revoked_at=float(self._clock()),
            )
            entries = dict(self._entries)
            entries[key_id] = _Entry(record, entry.sha256)
            self._write(entries)
            return record

    def authenticate(self, secret: str | None) -> KeyRecord:
        """The active record for ``secret``; the caller still checks ``record.task``.

        Raises:
            AuthError: ``reason`` is ``"missing"`` (``None`` / empty), ``"malformed"``
                (not ``mmk_<12 hex>_<43 url-safe chars>``), ``"unknown"`` (no such id,
                or a wrong token for it), ``"revoked"`` or ``"expired"``.
        """
        if not secret:
            raise AuthError("missing")
        match = _SECRET_RE.fullmatch(secret) if isinstance(secret, str) else None
        if match is None:
            raise AuthError("malformed")
        key_id, token = match.groups()
        with self._lock:
            self._refresh()
            entry = self._entries.get(key_id)
        digest = _hash_token(token)
        # Constant-time compare, and the same work when the id is unknown, so that
        # timing reveals neither the stored hash nor which ids exist.
        expected = entry.sha256 if entry is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(digest, expected)
        if entry is None or not matches:
            raise AuthError("unknown", key_id)
        status = entry.record.status(float(self._clock()))
        if status != "active":
            raise AuthError(status, key_id)
        return entry.record
