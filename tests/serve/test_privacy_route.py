"""``GET /v1/tasks/{task}/privacy``: what the run's ε and a task's released features cover."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from metamorphosis.config import config_from_dict
from metamorphosis.data import ImageTransform
from metamorphosis.experiment import train_run
from metamorphosis.privacy.scope import privacy_scope
from metamorphosis.rundir import load_producer, read_run_json
from metamorphosis.serve.app import create_app
from metamorphosis.serve.client import AsyncConsumerClient, ConsumerClient
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.server import build_service, key_store
from metamorphosis.serve.service import FolderSource, ProducerService
from tiny import tiny_config_dict

FIELDS = {"task", "epsilon", "delta", "private_heads", "scope", "sigma", "dfil"}
DFIL = {"mean": 0.25, "median": 0.2, "p95": 0.5, "psnr_cap": -3.01, "probes": 8, "sigma": 0.3}


def _auth(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def _copy_with(served_run, tmp_path, edit):
    """A copy of the run dir whose ``run.json`` is ``edit``ed in place."""
    copy = tmp_path / "run"
    shutil.copytree(served_run, copy)
    record = json.loads((copy / "run.json").read_text())
    edit(record)
    (copy / "run.json").write_text(json.dumps(record))
    read_run_json(copy)  # still a valid run dir
    return copy


def _privacy_requests(app) -> float:
    labels = {"route": "/v1/tasks/{task}/privacy", "status": "200"}
    value = app.state.metrics.registry.get_sample_value("metamorphosis_requests_total", labels)
    return value or 0.0


def _fallback_scope(record) -> str:
    return privacy_scope(
        dp=record["privacy"]["epsilon"] is not None,
        private_heads=False,
        noisy_release=all(record["release"][t]["sigma"] > 0 for t in record["tasks"]),
    )


def _old_style(record) -> None:
    """As a run dir written before ``scope``, ``private_heads`` and ``dfil`` existed."""
    record["privacy"].pop("scope", None)
    record["privacy"].pop("private_heads", None)
    for entry in record["release"].values():
        entry.pop("dfil", None)


@pytest.fixture(scope="module")
def app_and_keys(served_run):
    app = create_app(build_service(served_run, max_ids=16))
    store = key_store(served_run)
    return app, {task: store.issue(task).secret for task in ("shape", "large")}


def test_a_tasks_key_reads_the_runs_privacy_record(served_run, app_and_keys):
    app, keys = app_and_keys
    record = read_run_json(served_run)
    client = TestClient(app)
    before = _privacy_requests(app)
    for task in ("shape", "large"):
        response = client.get(f"/v1/tasks/{task}/privacy", headers=_auth(keys[task]))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == FIELDS
        assert answer["task"] == task
        assert answer["epsilon"] == record["privacy"]["epsilon"]
        assert answer["delta"] == record["privacy"]["delta"]
        assert answer["private_heads"] is bool(record["privacy"].get("private_heads", False))
        assert isinstance(answer["scope"], str) and answer["scope"].strip()
        assert answer["scope"] == (record["privacy"].get("scope") or _fallback_scope(record))
        assert answer["sigma"] == float(record["release"][task]["sigma"])
        assert answer["dfil"] == record["release"][task].get("dfil")
    assert _privacy_requests(app) == before + 2  # a bounded route label, not "other"


def test_the_privacy_route_refuses_keys_exactly_as_the_schema_route(served_run, app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    expired = key_store(served_run).issue("shape", ttl=1e-6).secret
    unknown = "mmk_0123456789ab_" + "x" * 43
    cases = {
        "no key": ("shape", None),
        "not a key": ("shape", "not-a-key"),
        "unknown key": ("shape", unknown),
        "expired key": ("shape", expired),
        "another task's key": ("large", keys["shape"]),
        "no such task": ("no-such-task", keys["shape"]),
    }
    for name, (task, secret) in cases.items():
        schema = client.get(f"/v1/tasks/{task}/schema", headers=_auth(secret))
        privacy = client.get(f"/v1/tasks/{task}/privacy", headers=_auth(secret))
        assert privacy.status_code == schema.status_code, name
        assert privacy.json() == schema.json(), name
        assert privacy.headers.get("www-authenticate") == schema.headers.get("www-authenticate")
    assert client.get("/v1/tasks/shape/privacy").status_code == 401
    other = client.get("/v1/tasks/large/privacy", headers=_auth(keys["shape"]))
    assert other.status_code == 403


def test_an_old_run_dir_answers_with_the_fallback_scope_and_no_dfil(served_run, tmp_path):
    copy = _copy_with(served_run, tmp_path, _old_style)
    record = read_run_json(copy)
    secret = key_store(copy).issue("shape").secret
    answer = TestClient(create_app(build_service(copy))).get(
        "/v1/tasks/shape/privacy", headers=_auth(secret)
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["scope"] == _fallback_scope(record)
    assert body["private_heads"] is False and body["dfil"] is None
    assert body["epsilon"] == record["privacy"]["epsilon"]
    assert body["sigma"] == float(record["release"]["shape"]["sigma"])


def test_a_run_dir_without_a_release_entry_has_sigma_zero(served_run, tmp_path):
    def no_release(record):
        _old_style(record)
        del record["release"]

    copy = _copy_with(served_run, tmp_path, no_release)
    secret = key_store(copy).issue("large").secret
    body = (
        TestClient(create_app(build_service(copy)))
        .get("/v1/tasks/large/privacy", headers=_auth(secret))
        .json()
    )
    assert body["sigma"] == 0.0 and body["dfil"] is None
    dp = read_run_json(copy)["privacy"]["epsilon"] is not None
    assert body["scope"] == privacy_scope(dp=dp, private_heads=False, noisy_release=False)


def test_a_recorded_dfil_scope_and_private_heads_are_returned_as_they_are(served_run, tmp_path):
    def new_style(record):
        record["privacy"]["scope"] = "what epsilon covers, as the run wrote it"
        record["privacy"]["private_heads"] = True
        record["release"]["shape"]["sigma"] = 0.3
        record["release"]["shape"]["dfil"] = dict(DFIL)

    copy = _copy_with(served_run, tmp_path, new_style)
    store = key_store(copy)
    client = TestClient(create_app(build_service(copy)))
    shape = client.get("/v1/tasks/shape/privacy", headers=_auth(store.issue("shape").secret))
    large = client.get("/v1/tasks/large/privacy", headers=_auth(store.issue("large").secret))
    assert shape.json()["dfil"] == DFIL and shape.json()["sigma"] == 0.3
    assert shape.json()["scope"] == "what epsilon covers, as the run wrote it"
    assert shape.json()["private_heads"] is True
    assert large.json()["dfil"] is None  # only the task whose release records one
    assert large.json()["scope"] == shape.json()["scope"]  # the run's, for every task


def test_the_run_record_is_read_once_when_the_service_is_built(served_run, tmp_path):
    copy = _copy_with(served_run, tmp_path, _old_style)
    service = build_service(copy)
    before = service.privacy("shape")
    (copy / "run.json").write_text("{not json")  # not read again per request
    assert service.privacy("shape") == before
    service.privacy("shape")["dfil"] = {"changed": 1}  # answers are copies
    assert service.privacy("shape") == before


def test_a_service_without_a_run_record_answers_404(served_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(folder / "a.png")
    store = KeyStore(tmp_path / "keys" / "keys.sqlite")  # no run.json beside it
    producer = load_producer(served_run)
    service = ProducerService(producer, FolderSource(folder, ImageTransform(16)), store)
    secret = store.issue("shape").secret
    answer = TestClient(create_app(service)).get("/v1/tasks/shape/privacy", headers=_auth(secret))
    assert answer.status_code == 404 and answer.json()["error"] == "not found"
    record = read_run_json(served_run)
    given = ProducerService(
        producer, FolderSource(folder, ImageTransform(16)), store, run_record=record
    )
    assert given.privacy("shape")["epsilon"] == record["privacy"]["epsilon"]


def test_the_clients_return_the_routes_answer(server):
    """Against a real ``serve`` process: the sync and the async client's ``privacy()``."""
    key = server.keys["shape"]
    with ConsumerClient(server.url, task="shape", key=key) as client:
        answer = client.privacy()
    direct = TestClient(create_app(build_service(server.run_dir))).get(
        "/v1/tasks/shape/privacy", headers=_auth(key)
    )
    assert answer == direct.json() and set(answer) == FIELDS

    async def fetch():
        async with AsyncConsumerClient(server.url, task="shape", key=key) as async_client:
            return await async_client.privacy()

    assert asyncio.run(fetch()) == answer


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A tiny run whose releases are variational codes with calibrated release noise."""
    raw = tiny_config_dict("input", epochs=1)
    raw["defence"] = {"bottleneck_channels": 2, "beta": 0.01}
    raw["release"] = {"target_psnr_cap": 12.0, "calibration_images": 32, "probes": 4}
    out = tmp_path_factory.mktemp("noisy") / "run"
    train_run(config_from_dict(raw), out, progress=False)
    return out


def test_a_noisy_release_answers_its_calibrated_sigma_and_bound(noisy_run):
    record = read_run_json(noisy_run)
    store = key_store(noisy_run)
    client = TestClient(create_app(build_service(noisy_run)))
    for task in ("shape", "large"):
        body = client.get(
            f"/v1/tasks/{task}/privacy", headers=_auth(store.issue(task).secret)
        ).json()
        assert body["sigma"] == record["release"][task]["sigma"] > 0
        assert body["dfil"] == record["release"][task]["dfil"]
        assert body["dfil"]["psnr_cap"] == pytest.approx(12.0, abs=3.0)  # fresh probes
        assert "keyed Gaussian noise" in body["scope"]
        assert body["scope"] == record["privacy"]["scope"]
        assert body["epsilon"] == record["privacy"]["epsilon"] is not None
    # the producer that releases uses run.json's sigma, not the config's defence.noise (0)
    assert load_producer(noisy_run).release_of("shape").noise == record["release"]["shape"]["sigma"]
