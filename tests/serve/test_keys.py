"""Consumer keys: hashed at rest, one task each, expiry, revocation across processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from metamorphosis.errors import MetaMorphosisError
from metamorphosis.serve import keys as keys_module
from metamorphosis.serve.keys import (
    AuthError,
    IssuedKey,
    KeyFileError,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    parse_bearer,
)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock) -> KeyStore:
    return KeyStore(tmp_path / "run" / "keys.sqlite", clock=clock)


def token_of(issued: IssuedKey) -> str:
    prefix = f"mmk_{issued.record.key_id}_"
    assert issued.secret.startswith(prefix)
    return issued.secret[len(prefix) :]


def reason_of(store: KeyStore, secret: str | None) -> str:
    with pytest.raises(AuthError) as info:
        store.authenticate(secret)
    if secret:
        assert token_like(secret) not in str(info.value)
    return info.value.reason


def token_like(secret: str) -> str:
    """The part after ``mmk_<id>_`` (the token may itself contain "_")."""
    return secret.split("_", 2)[2] if secret.count("_") >= 2 else secret


def test_issue_then_authenticate(store, clock):
    issued = store.issue("smile")
    record = issued.record
    assert len(record.key_id) == 12 and int(record.key_id, 16) >= 0
    assert len(token_of(issued)) == 43
    assert record.task == "smile"
    assert record.created_at == clock.now and record.expires_at is None
    assert store.authenticate(issued.secret) == record
    assert token_of(issued) not in repr(issued)


def rows(path):
    connection = sqlite3.connect(path)
    try:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM keys")]
    finally:
        connection.close()


def test_key_database_holds_only_the_hash_and_is_private(store):
    issued = store.issue("smile")
    data = store.path.read_bytes()
    assert token_of(issued).encode() not in data and issued.secret.encode() not in data
    (entry,) = rows(store.path)
    assert set(entry) == {"key_id", "task", "sha256", "created_at", "expires_at", "revoked_at"}
    assert entry["key_id"] == issued.record.key_id and len(entry["sha256"]) == 64
    assert entry["sha256"] == hashlib.sha256(token_of(issued).encode()).hexdigest()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert "sha256" not in issued.record.to_public_dict()
    leftovers = [p.name for p in store.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the temporary the database was built under is gone


def test_failure_reasons(store):
    issued = store.issue("smile")
    assert reason_of(store, None) == "missing"
    assert reason_of(store, "") == "missing"
    assert reason_of(store, "not-a-key") == "malformed"
    assert reason_of(store, issued.secret + "x") == "malformed"
    assert reason_of(store, issued.secret.replace("mmk_", "mmx_")) == "malformed"
    unknown_id = "0" * 12 if issued.record.key_id != "0" * 12 else "1" * 12
    assert reason_of(store, f"mmk_{unknown_id}_{token_of(issued)}") == "unknown"
    wrong_token = ("A" if token_of(issued)[0] != "A" else "B") + token_of(issued)[1:]
    assert reason_of(store, f"mmk_{issued.record.key_id}_{wrong_token}") == "unknown"
    with pytest.raises(AuthError) as info:
        store.authenticate(None)
    assert isinstance(info.value, MetaMorphosisError)


def test_expiry_with_a_fake_clock(store, clock):
    issued = store.issue("smile", ttl=60)
    assert issued.record.expires_at == clock.now + 60
    clock.now += 59.5
    assert store.authenticate(issued.secret).key_id == issued.record.key_id
    clock.now += 0.5
    assert reason_of(store, issued.secret) == "expired"
    assert store.list()[0].status(clock.now) == "expired"


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), float("inf"), True])
def test_bad_ttl_is_refused(store, ttl):
    with pytest.raises(MetaMorphosisError, match="ttl"):
        store.issue("smile", ttl=ttl)


@pytest.mark.parametrize("task", ["", "a b", "../x", "smile/", None])
def test_bad_task_name_is_refused(store, task):
    with pytest.raises(MetaMorphosisError, match="task"):
        store.issue(task)


def test_revoke_is_idempotent_and_blocks_the_key(store, clock):
    issued = store.issue("smile")
    clock.now += 10
    revoked = store.revoke(issued.record.key_id)
    assert revoked.revoked_at == clock.now
    assert reason_of(store, issued.secret) == "revoked"
    clock.now += 10
    assert store.revoke(issued.record.key_id) == revoked  # unchanged revoked_at
    with pytest.raises(KeyNotFound, match="deadbeef0000"):
        store.revoke("deadbeef0000")
    assert issubclass(KeyNotFound, MetaMorphosisError)


def test_changes_from_another_instance_are_seen(tmp_path, clock):
    path = tmp_path / "keys.sqlite"
    server = KeyStore(path, clock=clock)
    cli = KeyStore(path, clock=clock)
    issued = cli.issue("smile")  # issued while the server runs
    assert server.authenticate(issued.secret).task == "smile"
    other = server.issue("age")  # and the CLI sees the server's own writes too
    cli.revoke(issued.record.key_id)
    assert reason_of(server, issued.secret) == "revoked"
    assert {r.key_id for r in cli.list()} == {issued.record.key_id, other.record.key_id}
    assert cli.authenticate(other.secret).task == "age"


def test_list_shows_statuses(store, clock):
    active = store.issue("smile")
    clock.now += 1
    expiring = store.issue("smile", ttl=5)
    clock.now += 1
    revoked = store.issue("age")
    store.revoke(revoked.record.key_id)
    clock.now += 10
    records = store.list()
    assert [r.key_id for r in records] == [
        active.record.key_id,
        expiring.record.key_id,
        revoked.record.key_id,
    ]
    assert [r.status(clock.now) for r in records] == ["active", "expired", "revoked"]
    public = records[2].to_public_dict(clock.now)
    assert public["status"] == "revoked" and public["task"] == "age"
    assert KeyRecord("a" * 12, "t", 0.0, revoked_at=1.0, expires_at=0.5).status(2.0) == "revoked"


def test_missing_file_means_no_keys(tmp_path):
    store = KeyStore(tmp_path / "nowhere" / "keys.sqlite")
    assert store.list() == []
    assert reason_of(store, "mmk_" + "a" * 12 + "_" + "b" * 43) == "unknown"


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"version": 2, "keys": []}',
        '{"version": 1}',
        '{"version": 1, "keys": [{"key_id": "abc"}]}',
    ],
)
def test_a_corrupt_legacy_file_names_its_path_and_migrates_nothing(tmp_path, text):
    legacy = tmp_path / "keys.json"
    legacy.write_text(text)
    with pytest.raises(KeyFileError, match=str(legacy)):
        KeyStore(tmp_path / "keys.sqlite")
    assert legacy.read_text() == text and not (tmp_path / "keys.sqlite").exists()
    assert issubclass(KeyFileError, MetaMorphosisError)


@pytest.mark.parametrize("content", [b"garbage" * 100, b"SQLite format 3\x00" + b"\x00" * 84])
def test_a_corrupt_database_is_refused_when_opened(tmp_path, content):
    path = tmp_path / "keys.sqlite"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=str(path)):
        KeyStore(path)


def test_a_json_path_is_refused_with_the_new_name(tmp_path):
    with pytest.raises(KeyFileError, match="keys.sqlite"):
        KeyStore(tmp_path / "keys.json")


def test_file_corrupted_while_running_fails_closed(store):
    issued = store.issue("smile")
    store.path.write_bytes(b"garbage" * 100)
    with pytest.raises(KeyFileError, match="keys.sqlite"):
        store.authenticate(issued.secret)


# -- migration from keys.json -----------------------------------------------------------


def legacy_file(folder, clock, *, revoke=True):
    """A keys.json as the previous version wrote it: two keys, one revoked."""
    active, revoked = (
        {
            "key_id": key_id,
            "task": task,
            "sha256": hashlib.sha256(token.encode()).hexdigest(),
            "created_at": clock.now,
            "expires_at": None,
            "revoked_at": clock.now + 1 if (revoke and task == "age") else None,
        }
        for key_id, task, token in (
            ("0123456789ab", "smile", "a" * 43),
            ("ba9876543210", "age", "b" * 43),
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "keys.json"
    path.write_text(json.dumps({"version": 1, "keys": [active, revoked]}))
    return path, "mmk_0123456789ab_" + "a" * 43, "mmk_ba9876543210_" + "b" * 43


def test_keys_json_is_migrated_once_with_its_revocations(tmp_path, clock):
    legacy, smile, age = legacy_file(tmp_path, clock)
    store = KeyStore(tmp_path / "keys.sqlite", clock=clock)
    assert store.migrated and "migrated 2 key(s)" in store.migrated
    assert not legacy.exists() and (tmp_path / "keys.json.migrated").exists()
    assert store.authenticate(smile).task == "smile"
    assert reason_of(store, age) == "revoked"  # a revocation survives the migration
    again = KeyStore(tmp_path / "keys.sqlite", clock=clock)
    assert again.migrated is None  # once: the second store finds nothing to migrate
    assert [r.key_id for r in again.list()] == ["0123456789ab", "ba9876543210"]


def test_a_migration_killed_before_the_rename_is_finished_by_the_next_store(tmp_path, clock):
    legacy, smile, _ = legacy_file(tmp_path, clock)
    saved = legacy.read_text()
    KeyStore(tmp_path / "keys.sqlite", clock=clock)
    legacy.write_text(saved)  # as if killed between linking the database and the rename
    store = KeyStore(tmp_path / "keys.sqlite", clock=clock)
    assert store.migrated is None and not legacy.exists()
    assert store.authenticate(smile).task == "smile"


def test_a_keys_json_that_differs_from_the_database_is_refused(tmp_path, clock):
    legacy_file(tmp_path, clock)
    store = KeyStore(tmp_path / "keys.sqlite", clock=clock)
    store.issue("smile")  # the database moved on; a stale keys.json reappears
    legacy_file(tmp_path, clock, revoke=False)
    with pytest.raises(KeyFileError, match="hold different keys"):
        KeyStore(tmp_path / "keys.sqlite", clock=clock)
    assert (tmp_path / "keys.json").exists()  # left for the operator to check


# -- several processes ----------------------------------------------------------------------


def _issue_and_revoke(path: str, worker: int, rounds: int, out) -> None:
    store = KeyStore(path)
    issued = []
    for i in range(rounds):
        issued.append(store.issue(f"task{worker}").record.key_id)
        if i % 2:
            store.revoke(issued[-1])
    out.put((worker, issued))


def test_writers_in_two_processes_lose_no_key_and_resurrect_no_revocation(tmp_path):
    path = tmp_path / "keys.sqlite"
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    rounds = 25
    workers = [
        context.Process(target=_issue_and_revoke, args=(str(path), w, rounds, out))
        for w in range(2)
    ]
    for worker in workers:
        worker.start()
    results = dict(out.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    records = {r.key_id: r for r in KeyStore(path).list()}
    assert len(records) == 2 * rounds
    for w, key_ids in results.items():
        for i, key_id in enumerate(key_ids):
            assert records[key_id].task == f"task{w}"
            assert (records[key_id].revoked_at is not None) == bool(i % 2)


def test_a_revocation_from_another_process_is_seen_at_the_next_request(tmp_path, clock):
    path = tmp_path / "keys.sqlite"
    server = KeyStore(path, clock=clock)
    issued = server.issue("smile")
    assert server.authenticate(issued.secret).task == "smile"
    command = (
        "import sys; from metamorphosis.serve.keys import KeyStore; "
        "KeyStore(sys.argv[1]).revoke(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", command, str(path), issued.record.key_id], check=True)
    assert reason_of(server, issued.secret) == "revoked"


def test_constant_time_compare_is_used_also_for_unknown_ids(store, monkeypatch):
    calls = []
    real = keys_module.hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", counting)
    issued = store.issue("smile")
    store.authenticate(issued.secret)
    assert len(calls) == 1
    unknown_id = "f" * 12 if issued.record.key_id != "f" * 12 else "e" * 12
    with pytest.raises(AuthError):
        store.authenticate(f"mmk_{unknown_id}_{token_of(issued)}")
    assert len(calls) == 2


def test_parse_bearer():
    assert parse_bearer("Bearer mmk_x") == "mmk_x"
    assert parse_bearer("bearer   mmk_x ") == "mmk_x"
    assert parse_bearer("BEARER mmk_x") == "mmk_x"
    for header in (None, "", "Bearer", "Bearer ", "Basic abc", "Token mmk_x", "Bearer a b"):
        assert parse_bearer(header) is None


def test_auth_error_reason_is_validated():
    with pytest.raises(ValueError):
        AuthError("bogus")
    err = AuthError("revoked", "abcdef012345")
    assert err.reason == "revoked" and err.key_id == "abcdef012345"
    assert "abcdef012345" in str(err)
