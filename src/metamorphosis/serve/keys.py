"""Consumer API keys: one task per key, hashed at rest, expirable and revocable.

A secret looks like ``mmk_<key_id>_<token>``: ``key_id`` (12 hex characters) is a
public handle used to find the record, list and revoke it; ``token`` (32 random
bytes, URL-safe base64) is the secret part. The store keeps only ``sha256(token)``,
so reading it does not let anyone call the API.

The store is an SQLite database, ``keys.sqlite`` in the run dir (WAL mode, mode
0600). The service's workers and the ``metamorphosis keys`` CLI are different
processes sharing it: every operation opens its own connection and reads the
committed state, so a key issued or revoked from the CLI is seen by every worker at
its next request, and concurrent writers serialise on SQLite's lock (issue is one
``INSERT``, revoke one conditional ``UPDATE`` in an immediate transaction: no
update is lost, no revoked key comes back). A file created by a first write is
built under a temporary name and linked into place, so no process ever opens a
half-initialised database.

A run dir written by an earlier version holds ``keys.json``; the first store opened
on it migrates its keys once (every record checked as before; a corrupt file is an
error and nothing is migrated), links the new database into place and renames the
JSON file to ``keys.json.migrated``.

Authentication failures raise :class:`AuthError` with a ``reason`` for logs;
the HTTP layer answers every reason with the same 401 body, and messages never
contain the secret.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import MetaMorphosisError, RunDirError

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
    "KEYS_DATABASE",
    "LEGACY_KEYS_FILE",
    "parse_bearer",
    "valid_task_name",
]

SECRET_PREFIX = "mmk_"
AUTH_REASONS = ("missing", "malformed", "unknown", "expired", "revoked")
FILE_VERSION = 1  # of keys.json (migrated from) and of the database (its user_version)
KEYS_DATABASE = "keys.sqlite"  # in the run dir (CONTRACT: run dir)
LEGACY_KEYS_FILE = "keys.json"  # what earlier versions wrote; migrated once
MIGRATED_SUFFIX = ".migrated"
#: Seconds a writer waits for another process's transaction before failing.
BUSY_TIMEOUT = 10.0
_SCHEMA = """
CREATE TABLE keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    task TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
) STRICT
"""

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
    """The key database (or a ``keys.json`` to migrate) cannot be read or holds invalid
    records."""


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
    """One key record (a database row or a ``keys.json`` item), every field checked
    (``where`` names it in errors)."""
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
    """The consumer keys of one run, in an SQLite database (usually ``RUN_DIR/keys.sqlite``).

    A missing database means no keys (nothing is created until the first key is
    issued); a corrupt one raises :class:`KeyFileError` rather than silently dropping
    every key (or, worse, a revocation). A ``keys.json`` beside a missing database is
    migrated when the store is opened (:attr:`migrated` then says so).

    Args:
        path: The database file.
        clock: Epoch-seconds clock, injectable for tests of expiry.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        if self.path.suffix == ".json":
            raise KeyFileError(
                f"{self.path}: the key store is an SQLite database ({KEYS_DATABASE}); a "
                f"{LEGACY_KEYS_FILE} beside it is migrated when the store is opened"
            )
        self._clock = clock
        self._lock = threading.RLock()
        #: A line saying what was migrated from ``keys.json`` when this store did it.
        self.migrated: str | None = None
        self._migrate()
        self._read_all()  # a corrupt store is refused when opened, not at first use

    # -- the database -----------------------------------------------------------

    @property
    def legacy_path(self) -> Path:
        return self.path.with_name(LEGACY_KEYS_FILE)

    def _exists(self, path: Path) -> bool:
        """Whether ``path`` is there; refused when it is not a plain file (a symlink would
        fork the keys on a rewrite, a FIFO would block the reader forever)."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode):
            raise KeyFileError(f"key file {path} is a symlink: it must be a regular file")
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        return True

    def _connect(self, path: Path | None = None) -> sqlite3.Connection:
        path = self.path if path is None else path
        try:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise KeyFileError(f"cannot open key file {path}: {exc}") from exc
        return connection

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[_Entry]:
        """Rows of ``sql`` as checked entries; none when the database does not exist yet."""
        with self._lock:
            if not self._exists(self.path):
                return []
            connection = self._connect()
            try:
                self._check_version(connection)
                rows = connection.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise KeyFileError(f"key file {self.path} cannot be read: {exc}") from exc
            finally:
                connection.close()
        return [self._entry(row) for row in rows]

    def _check_version(self, connection: sqlite3.Connection) -> None:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version != FILE_VERSION:
            raise KeyFileError(
                f"key file {self.path} has format version {version}, expected {FILE_VERSION}"
            )

    def _entry(self, row: tuple[Any, ...]) -> _Entry:
        where = f"key file {self.path}: key {str(row[0])[:20]!r}"
        return _parse_record(where, dict(zip(_FIELDS, row, strict=True)))

    def _read_all(self) -> dict[str, _Entry]:
        entries = self._query(f"SELECT {', '.join(_FIELDS)} FROM keys ORDER BY created_at")
        return {e.record.key_id: e for e in entries}

    def _read(self, key_id: str) -> _Entry | None:
        rows = self._query(f"SELECT {', '.join(_FIELDS)} FROM keys WHERE key_id = ?", (key_id,))
        return rows[0] if rows else None

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run one write in an immediate transaction (creating the database first when it
        does not exist); the number of rows it changed."""
        with self._lock:
            if not self._exists(self.path):
                self._create([])
            connection = self._connect()
            try:
                self._check_version(connection)
                connection.execute("BEGIN IMMEDIATE")
                changed = connection.execute(sql, args).rowcount
                connection.execute("COMMIT")
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise KeyFileError(f"key file {self.path} cannot be written: {exc}") from exc
            finally:
                connection.close()
        return changed

    def _create(self, entries: builtins.list[_Entry]) -> bool:
        """Build the database holding ``entries`` under a temporary name, then link it into
        place; False when another process created it first (its keys win)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            os.chmod(tmp, 0o600)  # hashes only, but still nobody else's business
            connection = self._connect(tmp)
            try:
                connection.execute("PRAGMA journal_mode=WAL")  # kept in the file
                connection.execute("BEGIN")
                connection.execute(_SCHEMA)
                connection.executemany(
                    f"INSERT INTO keys VALUES ({', '.join('?' * len(_FIELDS))})",
                    [_row(e) for e in entries],
                )
                connection.execute(f"PRAGMA user_version = {FILE_VERSION}")
                connection.execute("COMMIT")
            finally:
                connection.close()
            try:
                os.link(tmp, self.path)  # atomic, and fails if the file appeared meanwhile
            except FileExistsError:
                return False
            return True
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)

    def _migrate(self) -> None:
        """Move ``keys.json``'s keys into a new database, once.

        The database is linked into place before the JSON file is renamed, so a process
        killed in between leaves both, holding the same keys: the next store finishes
        the rename. Both holding different keys is refused (one would be lost).
        """
        legacy = self.legacy_path
        with self._lock:
            if not self._exists(legacy):
                return
            entries = _parse_json(legacy)
            created = not self._exists(self.path) and self._create(list(entries.values()))
            if not created and self._read_all() != entries:
                raise KeyFileError(
                    f"both {self.path} and {legacy} exist and hold different keys: the "
                    f"database is the store; {legacy} was written since the migration "
                    "(by an older version?). Check it for keys or revocations missing "
                    "from `keys list`, then remove it"
                )
            # FileNotFoundError: another process finished the same migration
            with contextlib.suppress(FileNotFoundError):
                os.replace(legacy, legacy.with_name(legacy.name + MIGRATED_SUFFIX))
            if created:
                self.migrated = (
                    f"migrated {len(entries)} key(s) from {legacy} to {self.path} "
                    f"(the old file is kept as {legacy.name}{MIGRATED_SUFFIX})"
                )

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
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        now = float(self._clock())
        while True:
            record = KeyRecord(
                key_id=secrets.token_hex(_KEY_ID_BYTES),
                task=task,
                created_at=now,
                expires_at=None if ttl is None else now + float(ttl),
            )
            entry = _Entry(record, _hash_token(token))
            sql = f"INSERT INTO keys VALUES ({', '.join('?' * len(_FIELDS))})"
            try:
                self._write(sql, _row(entry))
                break
            except sqlite3.IntegrityError:  # pragma: no cover - 48 random bits collided
                continue
        return IssuedKey(record=record, secret=f"{SECRET_PREFIX}{record.key_id}_{token}")

    def list(self) -> builtins.list[KeyRecord]:
        """Every key (active, expired and revoked), oldest first."""
        return [entry.record for entry in self._read_all().values()]

    def get(self, key_id: str) -> KeyRecord:
        """The record of ``key_id``; :class:`KeyNotFound` when there is none."""
        entry = self._read(key_id)
        if entry is None:
            raise KeyNotFound(f"no key with id {key_id!r} in {self.path}")
        return entry.record

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id`` now; revoking a revoked key changes nothing and returns it.

        Raises:
            KeyNotFound: No key has this id.
        """
        if self._read(key_id) is None:
            raise KeyNotFound(f"no key with id {key_id!r} in {self.path}")
        # conditional: of two concurrent revocations the first time stays
        self._write(
            "UPDATE keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (float(self._clock()), key_id),
        )
        return self.get(key_id)

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
        entry = self._read(key_id)
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


def _row(entry: _Entry) -> tuple[Any, ...]:
    record = entry.record
    return (
        record.key_id,
        record.task,
        entry.sha256,
        record.created_at,
        record.expires_at,
        record.revoked_at,
    )


def _parse_json(path: Path) -> dict[str, _Entry]:
    """The keys of a ``keys.json`` (format version 1), every record checked."""
    where = f"key file {path}"
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise KeyFileError(f"{where} is over {_MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read {where}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{where} is not UTF-8 text") from exc
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
