"""Every bad input to serve / keys / consume / train --remote is one clear line; the HTTP
service answers bad requests with the documented status, not a hang, a 403 or a 5xx."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest
import torch
import yaml
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from metamorphosis.cli import app
from metamorphosis.errors import ConfigError
from metamorphosis.serve.app import (
    ACCESS_LOG,
    WS_INTERNAL_ERROR,
    WS_INVALID,
    WS_TRY_AGAIN_LATER,
    base_app,
    create_app,
)
from metamorphosis.serve.client import ConsumerClient
from metamorphosis.serve.codec import MEDIA_TYPE, encode_tensors
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.listen import listen_socket, uvicorn_server
from metamorphosis.serve.server import build_service, key_store
from metamorphosis.serve.training import TrainingServer, create_training_app
from metamorphosis.train.remote import TrainingHub
from tiny import tiny_config_dict

runner = CliRunner()


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture
def busy_port():
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A certificate and its key, a second certificate (of another key), and garbage."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make certificates")
    folder = tmp_path_factory.mktemp("tls")
    for name in ("a", "b"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-subj", "/CN=127.0.0.1", "-keyout", str(folder / f"{name}-key.pem")]
            + ["-out", str(folder / f"{name}-cert.pem")],
            check=True,
            capture_output=True,
        )
    (folder / "garbage.pem").write_text("not a certificate\n")
    return folder


# -- serve: flags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--port", "-1"], ["--port -1", "0 (any free port) to 65535"]),
        (["--port", "65536"], ["--port 65536", "to 65535"]),
        (["--port", "99999999999999999999"], ["--port 99999999999999999999"]),
        (["--metrics-port", "0"], ["--metrics-port 0", "1 to 65535"]),
        (["--metrics-port", "-5"], ["--metrics-port -5"]),
        (["--port", "8123", "--metrics-port", "8123"], ["must differ from --port 8123"]),
        (["--max-concurrency", "0"], ["--max-concurrency 0", ">= 1"]),
        (["--max-concurrency", "-1"], ["--max-concurrency -1"]),
        (["--max-ids", "0"], ["--max-ids 0", ">= 1"]),
        (["--max-ids", "-1"], ["--max-ids -1"]),
        (["--max-body-bytes", "0"], ["--max-body-bytes 0"]),
        (["--max-body-bytes", "-1"], ["--max-body-bytes -1"]),
        (["--host", ""], ["--host '' is empty"]),
        (["--host", "bogus.invalid", "--insecure"], ["--host 'bogus.invalid'"]),
        (["--data-root", "/nonexistent-data"], ["--data-root /nonexistent-data"]),
    ],
)
def test_serve_refuses_bad_flags(served_run, flags, fragments):
    _one_line_error(runner.invoke(app, ["serve", str(served_run), *flags]), *fragments)


def test_serve_refuses_a_port_in_use_before_announcing(served_run, busy_port):
    result = runner.invoke(app, ["serve", str(served_run), "--port", str(busy_port)])
    _one_line_error(result, f"--port {busy_port} is already in use")
    metrics = ["--port", "0", "--metrics-port", str(busy_port)]
    result = runner.invoke(app, ["serve", str(served_run), *metrics])
    _one_line_error(result, f"--metrics-port {busy_port} is already in use")


@pytest.mark.parametrize(
    ("cert", "key", "fragments"),
    [
        ("garbage.pem", "a-key.pem", ["--ssl-certfile", "holds no PEM certificate"]),
        ("a-cert.pem", "garbage.pem", ["--ssl-keyfile", "holds no PEM private key"]),
        ("b-cert.pem", "a-key.pem", ["the key does not belong to the certificate"]),
        ("missing.pem", "a-key.pem", ["--ssl-certfile", "is not a file"]),
    ],
)
def test_serve_refuses_unloadable_tls_files(served_run, tls_files, cert, key, fragments):
    tls = ["--ssl-certfile", str(tls_files / cert), "--ssl-keyfile", str(tls_files / key)]
    _one_line_error(runner.invoke(app, ["serve", str(served_run), *tls]), *fragments)


def test_serve_refuses_bad_sources_and_run_dirs(served_run, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 100)
    for source, fragment in [
        (text, "--source"),
        (video, "cannot decode the video"),
        ("validation", "--source 'validation' is invalid"),
    ]:
        result = runner.invoke(app, ["serve", str(served_run), "--source", str(source)])
        _one_line_error(result, fragment)
    for run_dir in (tmp_path / "none", text):  # the wording is rundir.py's
        _one_line_error(runner.invoke(app, ["serve", str(run_dir)]), str(run_dir))


# -- keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["0", "-1", "nan", "inf", "-inf", "1e20"])
def test_keys_issue_refuses_a_bad_ttl(served_run, ttl):
    command = ["keys", "issue", str(served_run), "--task", "shape", "--ttl", ttl]
    _one_line_error(runner.invoke(app, command), "--ttl", "seconds > 0")


def _run_copy(served_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(served_run, copy, ignore=shutil.ignore_patterns("keys.*"))
    return copy


_RECORD = {
    "key_id": "0123456789ab",
    "task": "shape",
    "sha256": "0" * 64,
    "created_at": 1.0,
    "expires_at": None,
    "revoked_at": None,
}


def _every_command(run):
    """Every command that opens the run's key store."""
    return (
        ["keys", "list", str(run)],
        ["keys", "issue", str(run), "--task", "shape"],
        ["keys", "revoke", str(run), "0123456789ab"],
        ["serve", str(run), "--port", "0"],
    )


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "is empty"),
        ('{"version": 1, "keys": [{"key_id": "01', "is not valid JSON"),
        ("[]", 'must be an object with "version": 1'),
        (json.dumps({"version": 1, "keys": [{**_RECORD, "task": 5}]}), "invalid task 5"),
        (json.dumps({"version": 1, "keys": [{**_RECORD, "created_at": "x"}]}), "created_at"),
        (json.dumps({"version": 1, "keys": [{**_RECORD, "expires_at": 1e300}]}), "expires_at"),
        (b"\xff\xfe garbage", "is not UTF-8 text"),
    ],
)
def test_a_bad_legacy_keys_json_is_one_line_and_not_migrated(
    served_run, tmp_path, content, fragment
):
    run = _run_copy(served_run, tmp_path)
    keys = run / "keys.json"
    keys.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in _every_command(run):
        _one_line_error(runner.invoke(app, command), str(keys), fragment)
    assert keys.exists() and not (run / "keys.sqlite").exists()  # nothing half-migrated


def _bad_database(path, kind):
    if kind == "garbage":
        path.write_bytes(b"{not a database" * 100)
        return
    connection = sqlite3.connect(path)
    if kind == "wrong version":
        connection.execute("CREATE TABLE keys (key_id TEXT)")
        connection.execute("PRAGMA user_version = 7")
    else:  # a row that breaks a rule the schema does not enforce
        connection.execute(_KEYS_TABLE)
        connection.execute("PRAGMA user_version = 1")
        row = {**_RECORD, "sha256": "not hex"}
        connection.execute("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?)", tuple(row.values()))
    connection.commit()
    connection.close()


_KEYS_TABLE = """CREATE TABLE keys (key_id TEXT PRIMARY KEY, task TEXT, sha256 TEXT,
    created_at REAL, expires_at REAL, revoked_at REAL)"""


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("garbage", "not a database"),
        ("wrong version", "format version 7, expected 1"),
        ("bad row", "invalid sha256 (hidden)"),
    ],
)
def test_a_bad_key_database_is_one_line_for_every_command(served_run, tmp_path, kind, fragment):
    run = _run_copy(served_run, tmp_path)
    keys = run / "keys.sqlite"
    _bad_database(keys, kind)
    for command in _every_command(run):
        _one_line_error(runner.invoke(app, command), str(keys), fragment)


def test_the_cli_says_once_that_it_migrated_keys_json(served_run, tmp_path):
    run = _run_copy(served_run, tmp_path)
    record = {**_RECORD, "revoked_at": 2.0}
    (run / "keys.json").write_text(json.dumps({"version": 1, "keys": [record]}))
    first = runner.invoke(app, ["keys", "list", str(run)])
    assert first.exit_code == 0, first.output
    assert "migrated 1 key(s)" in first.stderr and "keys.json.migrated" in first.stderr
    assert "0123456789ab" in first.stdout and "revoked" in first.stdout
    second = runner.invoke(app, ["keys", "list", str(run)])
    assert second.exit_code == 0 and "migrated" not in second.stderr
    assert second.stdout == first.stdout


def test_a_keys_file_that_is_a_symlink_fifo_or_folder_is_refused(served_run, tmp_path):
    run = _run_copy(served_run, tmp_path)
    keys = run / "keys.sqlite"
    (run / "elsewhere.sqlite").write_bytes(b"")
    keys.symlink_to(run / "elsewhere.sqlite")
    _one_line_error(runner.invoke(app, ["keys", "list", str(run)]), "is a symlink")
    keys.unlink()
    os.mkfifo(keys)  # reading it would block forever
    _one_line_error(runner.invoke(app, ["keys", "list", str(run)]), "not a regular file")
    keys.unlink()
    keys.mkdir()
    _one_line_error(runner.invoke(app, ["keys", "list", str(run)]), "not a regular file")


# -- consume ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--limit", "0"], "--limit 0"),
        (["--limit", "-1"], "--limit -1"),
        (["--encoding", "bogus"], "--encoding 'bogus'"),
        (["--wait", "nan"], "--wait nan"),
        (["--wait", "-1"], "--wait -1"),
        (["--cafile", "/nonexistent-ca.pem"], "--cafile"),
    ],
)
def test_consume_refuses_bad_flags_before_connecting(tmp_path, flags, fragment):
    out = tmp_path / "f.safetensors"
    command = ["consume", "http://127.0.0.1:9", "--task", "shape", "--key", "k"]
    _one_line_error(runner.invoke(app, [*command, "--out", str(out), *flags]), fragment)


@pytest.mark.parametrize(
    ("url", "task", "key", "fragment"),
    [
        ("notaurl", "shape", "k", "URL 'notaurl' is invalid"),
        ("ftp://host", "shape", "k", "URL 'ftp://host'"),
        ("http://[::1", "shape", "k", "URL 'http://[::1'"),
        ("http://host:99999", "shape", "k", "URL 'http://host:99999'"),
        ("http://127.0.0.1:9", "a/b", "k", "--task 'a/b'"),
        ("http://127.0.0.1:9", "shape", "clé", "--key is not a key"),
    ],
)
def test_consume_refuses_a_bad_url_task_or_key(tmp_path, url, task, key, fragment):
    command = ["consume", url, "--task", task, "--key", key, "--out", str(tmp_path / "f")]
    _one_line_error(runner.invoke(app, command), fragment)


# -- train --remote ------------------------------------------------------------------


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict("both")))
    return path


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--step-timeout", "0"], "--step-timeout 0.0"),
        (["--step-timeout", "-1"], "--step-timeout -1.0"),
        (["--step-timeout", "nan"], "--step-timeout nan"),
        (["--step-timeout", "inf"], "--step-timeout inf"),
        (["--port", "-1"], "--port -1"),
        (["--port", "65536"], "--port 65536"),
    ],
)
def test_remote_training_refuses_bad_flags(tiny_config, tmp_path, flags, fragment):
    out = tmp_path / "run"
    command = ["train", str(tiny_config), "--out", str(out), "--remote", *flags]
    _one_line_error(runner.invoke(app, command), fragment)
    assert not (out / "keys.sqlite").exists()


def test_remote_training_refuses_a_busy_port_and_bad_tls_before_issuing_keys(
    tiny_config, tmp_path, busy_port, tls_files
):
    out = tmp_path / "run"
    command = ["train", str(tiny_config), "--out", str(out), "--remote"]
    result = runner.invoke(app, [*command, "--port", str(busy_port)])
    _one_line_error(result, f"--port {busy_port} is already in use")
    tls = ["--ssl-certfile", str(tls_files / "b-cert.pem")]
    tls += ["--ssl-keyfile", str(tls_files / "a-key.pem")]
    _one_line_error(runner.invoke(app, [*command, *tls]), "does not belong to the certificate")
    assert not (out / "keys.sqlite").exists()


def test_the_training_server_refuses_a_busy_port(tmp_path, busy_port):
    hub = TrainingHub(["shape"], timeout=5)
    with pytest.raises(ConfigError, match="already in use"):
        TrainingServer(hub, KeyStore(tmp_path / "keys.sqlite"), port=busy_port)


# -- the HTTP service ------------------------------------------------------------------


@contextmanager
def _uvicorn(asgi_app, *, header_timeout=10.0):
    """``asgi_app`` on a real uvicorn (the servers' own configuration) on 127.0.0.1."""
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn_server(asgi_app, host="127.0.0.1", port=port, header_timeout=header_timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_request_trickling_its_headers_is_closed(served_run):
    with _uvicorn(base_app(max_body_bytes=100, max_concurrency=2), header_timeout=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 4:
                try:
                    sock.sendall(b"a")
                    sock.settimeout(0.2)
                    closed = sock.recv(1024) == b""
                except TimeoutError:
                    continue
                except OSError:  # reset by the server
                    closed = True
                if closed:
                    break
            assert closed and time.monotonic() - started < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            idle.settimeout(4)
            assert idle.recv(1024) == b""  # connected, sent nothing: closed as well
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # others still served


def test_the_header_deadline_spares_slow_answers_and_websockets():
    from websockets.sync.client import connect

    app_ = base_app(max_body_bytes=100, max_concurrency=2)

    @app_.get("/v1/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(1.5)
        return {"status": "done"}

    @app_.websocket("/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await asyncio.sleep(1.5)
        await websocket.send_text("still here")
        await websocket.close()

    with _uvicorn(app_, header_timeout=0.5) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/slow", timeout=10).json() == {"status": "done"}
        time.sleep(1.0)  # idle on the kept-alive connection, then a second request
        assert client.get("/healthz", timeout=10).status_code == 200
        with connect(url.replace("http", "ws") + "/v1/ws") as socket_:
            assert socket_.recv(timeout=10) == "still here"


def _slow_app(max_concurrency: int) -> tuple[FastAPI, asyncio.Event]:
    app_ = base_app(max_body_bytes=1000, max_concurrency=max_concurrency)
    release = asyncio.Event()

    @app_.get("/v1/slow")
    async def slow() -> dict[str, str]:
        await release.wait()
        return {"status": "done"}

    return app_, release


def test_health_checks_are_answered_when_every_slot_is_busy():
    app_, release = _slow_app(max_concurrency=1)

    async def scenario():
        transport = httpx.ASGITransport(app=app_)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            busy = asyncio.create_task(client.get("/v1/slow"))
            await asyncio.sleep(0.1)
            answers = [await client.get(p) for p in ("/v1/slow", "/healthz", "/readyz")]
            release.set()
            return [a.status_code for a in answers], (await busy).status_code

    assert asyncio.run(scenario()) == ([503, 200, 200], 200)


def test_limits_below_one_are_refused_by_the_app():
    with pytest.raises(ValueError, match="max_concurrency=0"):
        base_app(max_body_bytes=10, max_concurrency=0)
    with pytest.raises(ValueError, match="max_body_bytes=0"):
        base_app(max_body_bytes=0, max_concurrency=1)
    for seconds in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="body_timeout="):
            base_app(max_body_bytes=10, max_concurrency=1, body_timeout=seconds)


def _upload_app(**limits) -> FastAPI:
    """``POST /v1/upload?wait=S`` reads the whole body, waits S seconds, says its size."""
    app_ = base_app(max_body_bytes=1000, **limits)

    @app_.post("/v1/upload")
    async def upload(request: Request, wait: float = 0.0) -> dict[str, int]:
        body = await request.body()
        await asyncio.sleep(wait)
        return {"bytes": len(body)}

    return app_


def _read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def test_a_trickled_body_gets_408_and_frees_its_slot():
    with _uvicorn(_upload_app(max_concurrency=1, body_timeout=1.0)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            started = time.monotonic()
            sock.sendall(b"a")
            busy = httpx.post(f"{url}/v1/upload", content=b"x", timeout=5)
            assert busy.status_code == 503  # the trickle holds the only slot
            while time.monotonic() - started < 0.8:  # a byte every 0.2 s: never idle for 1 s
                time.sleep(0.2)
                sock.sendall(b"a")
            answer = _read_until_closed(sock, 3)  # then closed: b"" (a hang: TimeoutError)
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"did not arrive within 1 s" in answer
        assert 0.9 < elapsed < 1.6  # a deadline on the whole body, not an idle timeout
        slow = httpx.post(f"{url}/v1/upload?wait=1.5", content=b"x" * 10, timeout=10)
        assert slow.json() == {"bytes": 10}  # the slot is free; a slow answer is not cut


def test_a_client_leaving_mid_body_is_logged_without_a_traceback(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger(ACCESS_LOG), "propagate", True)
    caplog.set_level(logging.INFO, logger=ACCESS_LOG)
    with _uvicorn(_upload_app(max_concurrency=1)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while "499" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(f"{url}/v1/upload", content=b"x", timeout=5).status_code == 200
    access = [r for r in caplog.records if r.name == ACCESS_LOG]
    assert [json.loads(r.getMessage())["status"] for r in access] == [499, 200], caplog.text
    assert not any(r.exc_info for r in caplog.records), caplog.text


def _stream_until_closed(url: str, headers: dict[str, str]) -> tuple[int, int, str]:
    """Messages a stream sent, then the code and reason it closed with."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    messages = 0
    with connect(url, additional_headers=headers) as stream:
        try:
            while True:
                stream.recv(timeout=10)
                messages += 1
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return messages, closed.rcvd.code, closed.rcvd.reason


def test_an_open_stream_holds_a_concurrency_slot(served_run):
    from websockets.sync.client import connect

    app_ = create_app(build_service(served_run, max_ids=16), max_concurrency=1)
    release = threading.Event()

    @app_.websocket("/v1/held")
    async def held(websocket: WebSocket) -> None:
        await websocket.accept()
        await asyncio.to_thread(release.wait, 10)
        await websocket.send_text("released")
        await websocket.close()

    auth = {"Authorization": f"Bearer {key_store(served_run).issue('shape').secret}"}
    with _uvicorn(app_) as url:
        ws_url = url.replace("http", "ws")
        stream_url = f"{ws_url}/v1/tasks/shape/stream?batch_size=4"
        with connect(f"{ws_url}/v1/held") as first:
            time.sleep(0.2)  # the handshake is done: its slot is taken
            busy = _stream_until_closed(stream_url, auth)
            assert busy == (0, WS_TRY_AGAIN_LATER, "server busy: try again later")
            items = httpx.get(f"{url}/v1/tasks/shape/items", headers=auth, timeout=5)
            assert items.status_code == 503
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            release.set()
            assert first.recv(timeout=10) == "released"
        for _ in range(50):  # the slot comes back once the first stream's handler returns
            messages, code, _reason = _stream_until_closed(stream_url, auth)
            if code != WS_TRY_AGAIN_LATER:
                break
            time.sleep(0.05)
        assert code == 1000 and messages >= 1


def test_a_chunked_gradient_over_the_limit_gets_413(tmp_path):
    hub = TrainingHub(["shape"], timeout=5)
    keys = KeyStore(tmp_path / "keys.sqlite")
    auth = {"Authorization": f"Bearer {keys.issue('shape').secret}", "Content-Type": MEDIA_TYPE}
    hub.current_ids = ["a"]
    step = hub.publish("shape", torch.zeros(1, 2, 2, 2))
    app_ = create_training_app(hub, keys, max_body_bytes=4096)
    path = f"/v1/tasks/shape/train/steps/{step.step_id}/grad"

    async def post(chunks):
        async def body():
            for chunk in chunks:
                yield chunk

        transport = httpx.ASGITransport(app=app_)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(path, content=body(), headers=auth)
            assert "content-length" not in response.request.headers  # it was chunked
            return response

    assert asyncio.run(post([b"x" * 1024] * 5)).status_code == 413
    assert not step.answered.is_set()
    grad = encode_tensors({"grad": torch.ones(1, 2, 2, 2)}, metadata={"loss": "0.5"})
    fine = asyncio.run(post([grad[:10], grad[10:]]))
    assert fine.status_code == 202 and step.answered.is_set()


def test_a_chunked_body_over_the_limit_gets_413_from_uvicorn(tmp_path):
    hub = TrainingHub(["shape"], timeout=5)
    keys = KeyStore(tmp_path / "keys.sqlite")
    auth = {"Authorization": f"Bearer {keys.issue('shape').secret}"}
    with _uvicorn(create_training_app(hub, keys, max_body_bytes=4096)) as url:
        body = iter([b"x" * 3000, b"x" * 3000])  # an iterator: chunked, no Content-Length
        response = httpx.post(f"{url}/v1/tasks/shape/train/head", content=body, headers=auth)
    assert response.status_code == 413


@pytest.fixture(scope="module")
def comma_folder(tmp_path_factory):
    """Images whose names (the item ids) hold commas, as CSV image names may."""
    folder = tmp_path_factory.mktemp("comma")
    for i, name in enumerate(["a,b.png", "c.png", "d,e,f.png"]):
        Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(folder / name)
    return folder


def test_ids_with_commas_round_trip_through_the_client(served_run, comma_folder):
    service = build_service(served_run, source=str(comma_folder))
    secret = key_store(served_run).issue("shape").secret
    with (
        _uvicorn(create_app(service)) as url,
        ConsumerClient(url, task="shape", key=secret) as client,
    ):
        ids = client.items()["ids"]
        assert ids == ["a,b.png", "c.png", "d,e,f.png"]
        features, answered = client.features(["a,b.png"])
        assert answered == ["a,b.png"] and features.shape[0] == 1
        features, answered = client.features(ids)
        assert answered == ids and features.shape[0] == 3
        walked = [i for _, batch in client.iter_features(batch_size=2) for i in batch]
        assert walked == ids
        auth = {"Authorization": f"Bearer {secret}"}
        legacy = httpx.get(f"{url}/v1/tasks/shape/features?ids=c.png", headers=auth)
        assert legacy.status_code == 200  # the comma-separated form still works
        both = httpx.get(f"{url}/v1/tasks/shape/features?ids=c.png&id=c.png", headers=auth)
        assert both.status_code == 422 and "not both" in both.text


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("batch_size=abc", "batch_size must be an integer"),
        ("batch_size=0", "batch_size must be in [1, 16]"),
        ("batch_size=-1", "batch_size must be in [1, 16]"),
        ("batch_size=" + "9" * 40, "batch_size must be in [1, 16]"),
        ("batch_size=" + "9" * 5000, "batch_size must be an integer"),
        ("encoding=q4", "encoding must be one of"),
        ("compression=lzma", "compression must be one of"),
    ],
)
def test_a_bad_stream_parameter_closes_with_4422_and_a_reason(served_run, query, reason):
    client = TestClient(create_app(build_service(served_run, max_ids=16)))
    headers = {"Authorization": f"Bearer {key_store(served_run).issue('shape').secret}"}
    with (
        client.websocket_connect(f"/v1/tasks/shape/stream?{query}", headers=headers) as ws,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        ws.receive_bytes()
    assert closed.value.code == WS_INVALID and reason in closed.value.reason


def test_one_request_writes_one_access_log_line(server):
    marker = uuid.uuid4().hex
    assert httpx.get(f"{server.url}/{marker}", timeout=10).status_code == 404
    time.sleep(0.3)
    lines = [x for x in server.log().splitlines() if marker in x]
    assert len(lines) == 1 and json.loads(lines[0])["status"] == 404, lines


def test_a_corrupt_image_in_the_folder_is_a_clear_500(served_run, tmp_path, caplog, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "cut.png").write_bytes((folder / "good.png").read_bytes()[:60])  # truncated
    monkeypatch.setattr(logging.getLogger(ACCESS_LOG), "propagate", True)
    caplog.set_level(logging.ERROR, logger=ACCESS_LOG)
    client = TestClient(create_app(build_service(served_run, source=str(folder))))
    auth = {"Authorization": f"Bearer {key_store(served_run).issue('shape').secret}"}
    path = "/v1/tasks/shape/features"
    assert client.get(path, params={"id": "good.png"}, headers=auth).status_code == 200
    for item in ("bad.png", "cut.png"):
        caplog.clear()
        answer = client.get(path, params={"id": ["good.png", item]}, headers=auth)
        detail = f"cannot read item {item!r}"
        assert answer.status_code == 500
        assert answer.json() == {"error": "unreadable item", "detail": detail}
        assert str(tmp_path) not in answer.text  # the item id, not the server's path
        [line] = [r for r in caplog.records if r.name == ACCESS_LOG]  # one, for the operator
        assert detail in line.getMessage() and str(folder / item) in line.getMessage()
        assert not any(r.exc_info for r in caplog.records), caplog.text  # no traceback
    with (
        client.websocket_connect("/v1/tasks/shape/stream?batch_size=1", headers=auth) as ws,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        ws.receive_bytes()  # bad.png comes first (ids are sorted)
    assert closed.value.code == WS_INTERNAL_ERROR
    assert closed.value.reason == "cannot read item 'bad.png'"
