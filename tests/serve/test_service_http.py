"""The producer service as consumers see it: a real uvicorn process on 127.0.0.1."""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from metamorphosis.cli import app
from metamorphosis.config import config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.rundir import load_producer, read_run_json
from metamorphosis.serve.client import ConsumerClient, ServiceError
from metamorphosis.serve.codec import decode_tensors

runner = CliRunner()
SERVE_SOURCES = Path(__file__).resolve().parents[2] / "src" / "metamorphosis" / "serve"


def _get(server, path, key=None, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.url}{path}", headers=headers, params=params, timeout=30)


def test_health_and_readiness_need_no_key(server):
    assert _get(server, "/healthz").json() == {"status": "ok"}
    assert _get(server, "/readyz").status_code == 200


def test_a_consumer_gets_exactly_its_tasks_features(server):
    record = read_run_json(server.run_dir)
    config = config_from_dict(record["config"])
    test_split = build_datasets(config.data, config.all_labels, seed=config.train.seed).test
    producer = load_producer(server.run_dir)
    with ConsumerClient(server.url, task="shape", key=server.keys["shape"]) as client:
        schema = client.schema()
        assert schema["shape"] == record["feature_shapes"]["shape"]
        ids = client.items(limit=5)["ids"]
        assert ids == test_split.item_ids[:5]
        features, answered = client.features(ids)
    assert answered == ids
    images = torch.stack([test_split.get_item_by_id(i)[0] for i in ids])
    with torch.no_grad():
        expected = producer.features(images, task="shape")
    assert torch.allclose(features, expected, atol=1e-5, rtol=1e-5)  # server threads reorder sums


@pytest.mark.parametrize(
    ("encoding", "compression", "tolerance"),
    [("float16", "none", 1e-2), ("int8", "zstd", 5e-2), ("float32", "zstd", 0.0)],
)
def test_negotiated_encodings_decode_close_to_float32(server, encoding, compression, tolerance):
    with ConsumerClient(server.url, task="large", key=server.keys["large"]) as client:
        ids = client.items(limit=4)["ids"]
        exact, _ = client.features(ids)
        approx, _ = client.features(ids, encoding=encoding, compression=compression)
    scale = exact.abs().max()
    assert torch.allclose(approx, exact, atol=float(tolerance * scale), rtol=0)


def test_iter_features_walks_every_item(server):
    with ConsumerClient(server.url, task="shape", key=server.keys["shape"]) as client:
        total = client.items(limit=1)["total"]
        seen = [i for _, ids in client.iter_features(batch_size=5) for i in ids]
    assert len(seen) == total == len(set(seen))


def test_every_bad_key_gets_the_same_401(server):
    unknown = "mmk_0123456789ab_" + "x" * 43
    answers = [
        _get(server, "/v1/tasks/shape/schema"),
        _get(server, "/v1/tasks/shape/schema", key="not-a-key"),
        _get(server, "/v1/tasks/shape/schema", key=unknown),
        _get(server, "/v1/tasks/shape/schema", key=server.keys["expired"]),
    ]
    assert {a.status_code for a in answers} == {401}
    assert {a.text for a in answers} == {
        json.dumps({"error": "unauthorized"}, separators=(",", ":"))
    }
    assert all(a.headers["www-authenticate"] == "Bearer" for a in answers)


def test_a_revoked_key_is_refused_by_the_running_server(server):
    key = server.keys["to_revoke"]
    assert _get(server, "/v1/tasks/shape/schema", key=key).status_code == 200
    result = runner.invoke(
        app, ["keys", "revoke", str(server.run_dir), server.key_ids["to_revoke"]]
    )
    assert result.exit_code == 0, result.output
    assert _get(server, "/v1/tasks/shape/schema", key=key).status_code == 401


def test_another_tasks_key_gets_403_whether_or_not_the_task_exists(server):
    key = server.keys["shape"]
    other = _get(server, "/v1/tasks/large/features", key=key, ids="x")
    missing = _get(server, "/v1/tasks/no-such-task/features", key=key, ids="x")
    assert other.status_code == missing.status_code == 403
    assert other.text == missing.text


def test_bad_requests_are_answered_with_4xx_not_5xx(server):
    key = server.keys["shape"]
    ids = _get(server, "/v1/tasks/shape/items", key=key, limit=20).json()["ids"]
    assert _get(server, "/v1/tasks/shape/features", key=key, ids="nope").status_code == 404
    bad_encoding = _get(server, "/v1/tasks/shape/features", key=key, ids=ids[0], encoding="q4")
    assert bad_encoding.status_code == 422
    too_many = _get(server, "/v1/tasks/shape/features", key=key, ids=",".join([ids[0]] * 17))
    assert too_many.status_code == 422 and "at most 16" in too_many.text
    oversized = httpx.post(f"{server.url}/v1/tasks/shape/features", content=b"x" * 5000, timeout=30)
    assert oversized.status_code == 413


def test_access_log_names_key_ids_never_secrets(server):
    _get(server, "/v1/tasks/shape/schema", key=server.keys["shape"])
    time.sleep(0.2)
    log = server.log()
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert any(line["key_id"] == server.key_ids["shape"] for line in lines)
    for secret in server.keys.values():
        token = secret.split("_", 2)[2]  # the token itself may contain "_"
        assert secret not in log and token not in log
    assert "authorization" not in log.lower()


def test_metrics_are_served_on_their_own_port(server):
    _get(server, "/healthz")
    text = httpx.get(server.metrics_url, timeout=10).text
    assert re.search(r'metamorphosis_requests_total\{route="/healthz",status="200"\} \d', text)
    assert _get(server, "/metrics").status_code == 404  # not on the API port


def test_consume_cli_writes_features_and_ids(server, tmp_path):
    out = tmp_path / "f.safetensors"
    result = runner.invoke(
        app,
        [
            "consume",
            server.url,
            "--task",
            "shape",
            "--key",
            server.keys["shape"],
            "--out",
            str(out),
            "--limit",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    tensors, metadata = decode_tensors(out.read_bytes())
    assert tensors["features"].shape[0] == 7 and len(json.loads(metadata["ids"])) == 7


def test_client_errors_carry_the_status(server):
    client = ConsumerClient(server.url, task="large", key=server.keys["shape"])
    with client, pytest.raises(ServiceError) as caught:
        client.schema()
    assert caught.value.status == 403


UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _unsafe_uses(tree: ast.AST) -> list[str]:
    """Imports of pickle-like modules, ``torch.load``, ``allow_pickle=True``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            UNSAFE_MODULES
        ):
            found.append(node.module or "")
        elif isinstance(node, ast.Attribute) and node.attr == "load":
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                found.append("torch.load")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            found.append("allow_pickle")
    return found


def test_no_pickle_or_torch_load_on_the_network_path():
    sources = sorted(SERVE_SOURCES.glob("*.py"))
    assert {"app.py", "codec.py", "client.py", "service.py"} <= {p.name for p in sources}
    for source in sources:
        assert _unsafe_uses(ast.parse(source.read_text())) == [], source.name
    # the scan itself finds what it looks for
    assert _unsafe_uses(ast.parse("import pickle\nx = torch.load(f)")) == ["pickle", "torch.load"]


def _stream(server, task, key, **params):
    """Every message of the stream, and the close code."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    query = "&".join(f"{k}={v}" for k, v in params.items())
    url = server.url.replace("http://", "ws://") + f"/v1/tasks/{task}/stream?{query}"
    messages = []
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
        try:
            while True:
                messages.append(socket.recv(timeout=30))
        except ConnectionClosed:
            return messages, socket.close_code


def test_the_stream_sends_every_item_in_batches(server):
    messages, code = _stream(server, "shape", server.keys["shape"], batch_size=5)
    assert code == 1000
    batches = [decode_tensors(m) for m in messages]
    ids = [i for _, metadata in batches for i in json.loads(metadata["ids"])]
    with ConsumerClient(server.url, task="shape", key=server.keys["shape"]) as client:
        assert ids == client.items(limit=1000)["ids"]
        first, _ = client.features(ids[:5])
    assert [t["features"].shape[0] for t, _ in batches][:2] == [5, 5]
    assert torch.equal(batches[0][0]["features"], first)


def test_the_stream_refuses_bad_keys_and_other_tasks(server):
    assert _stream(server, "shape", "mmk_0123456789ab_" + "y" * 43) == ([], 4401)
    assert _stream(server, "large", server.keys["shape"]) == ([], 4403)
    assert _stream(server, "shape", server.keys["shape"], batch_size=999) == ([], 4422)


def test_the_async_client_fetches_two_tasks_concurrently(server):
    import asyncio

    from metamorphosis.serve.client import AsyncConsumerClient

    async def fetch(task):
        async with AsyncConsumerClient(server.url, task=task, key=server.keys[task]) as client:
            ids = (await client.items(limit=3))["ids"]
            return await client.features(ids), (await client.schema())["shape"]

    async def both():
        return await asyncio.gather(fetch("shape"), fetch("large"))

    for (features, ids), shape in asyncio.run(both()):
        assert len(ids) == 3 and list(features.shape) == [3, *shape]
    unreachable = AsyncConsumerClient("http://127.0.0.1:9", task="shape", key="k")
    with pytest.raises(ServiceError) as caught:
        asyncio.run(unreachable.schema())
    assert caught.value.status == 0
