"""Split learning over HTTP: the protocol's refusals, and the same run as in process."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
import yaml

from metamorphosis.serve.client import ConsumerClient, ServiceError
from metamorphosis.serve.codec import MEDIA_TYPE, decode_tensors, encode_tensors
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.server import free_port
from metamorphosis.serve.training import STATE_HEADER, TrainingServer
from metamorphosis.train.remote import RemoteTimeout, TrainingHub
from metamorphosis.train.split import ConsumerReply
from tiny import tiny_config_dict


@pytest.fixture
def hub_app(tmp_path):
    """The training routes on a real uvicorn server on 127.0.0.1, and a key per task."""
    hub = TrainingHub(["shape", "large"], timeout=5)
    keys = KeyStore(tmp_path / "keys.sqlite")
    secrets = {t: keys.issue(t).secret for t in ("shape", "large")}
    with (
        TrainingServer(hub, keys, max_body_bytes=8192) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield hub, client, {t: {"Authorization": f"Bearer {s}"} for t, s in secrets.items()}


def _grad(tensor, loss=0.5):
    return encode_tensors({"grad": tensor}, metadata={"loss": repr(loss)})


def test_a_step_is_offered_until_answered_and_answered_once(hub_app):
    hub, client, auth = hub_app
    none = client.post("/v1/tasks/shape/train/next", headers=auth["shape"])
    assert none.status_code == 204 and none.headers[STATE_HEADER] == "training"
    hub.current_ids = ["a", "b"]
    step = hub.publish("shape", torch.randn(2, 4, 3, 3))
    for _ in range(2):  # a consumer that comes back is offered the same step
        offered = client.post("/v1/tasks/shape/train/next", headers=auth["shape"])
        tensors, metadata = decode_tensors(offered.content)
        assert metadata["step_id"] == step.step_id and json.loads(metadata["ids"]) == ["a", "b"]
        assert torch.equal(tensors["features"], step.features)
    path = f"/v1/tasks/shape/train/steps/{step.step_id}/grad"
    headers = {**auth["shape"], "Content-Type": MEDIA_TYPE}
    bad = {
        "shape": _grad(torch.zeros(2, 4, 3, 2)),
        "nan": _grad(torch.full((2, 4, 3, 3), math.nan)),
        "loss": _grad(torch.zeros(2, 4, 3, 3), loss=math.inf),
        "garbage": b"not safetensors",
    }
    for name, body in bad.items():
        assert client.post(path, content=body, headers=headers).status_code == 422, name
    assert not step.answered.is_set()
    grad = torch.randn(2, 4, 3, 3)
    assert client.post(path, content=_grad(grad, 0.25), headers=headers).status_code == 202
    assert client.post(path, content=_grad(grad), headers=headers).status_code == 409  # replay
    assert torch.equal(hub.wait(step)[0], grad) and hub.wait(step)[1] == 0.25
    stale = "/v1/tasks/shape/train/steps/shape-999/grad"
    assert client.post(stale, content=_grad(grad), headers=headers).status_code == 409


def test_keys_bind_to_their_task_and_bodies_are_bounded(hub_app):
    hub, client, auth = hub_app
    assert client.post("/v1/tasks/shape/train/next").status_code == 401
    assert client.post("/v1/tasks/shape/train/next", headers=auth["large"]).status_code == 403
    assert client.post("/v1/tasks/other/train/next", headers=auth["large"]).status_code == 403
    big = client.post("/v1/tasks/shape/train/head", content=b"x" * 9000, headers=auth["shape"])
    assert big.status_code == 413
    early = client.post(
        "/v1/tasks/shape/train/head",
        content=encode_tensors({"w": torch.ones(2)}),
        headers=auth["shape"],
    )
    assert early.status_code == 409  # heads are collected only at the end


def test_a_silent_consumer_times_out_with_a_clear_error():
    hub = TrainingHub(["shape"], timeout=0.05, retries=1)
    step = hub.publish("shape", torch.zeros(1, 2, 2, 2))
    with pytest.raises(RemoteTimeout, match="did not answer"):
        hub.wait(step)


class _CountingConsumer:
    """A consumer whose gradient is 2 × features; counts the steps its head takes."""

    def __init__(self):
        self.head = torch.nn.Linear(2, 1)
        self.steps = 0

    def step(self, features, target):
        self.steps += 1
        return ConsumerReply(grad=2 * features, loss=0.5)


def _train_in_thread(client, consumer):
    result = {}

    def run():
        try:
            result["answered"] = client.train(consumer, lambda ids: torch.zeros(len(ids)))
        except Exception as exc:  # surfaced by the test's assertions
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _answer_one_step_then_finish(hub):
    hub.current_ids = ["a", "b"]
    features = torch.randn(2, 3, 2, 2)
    grad, loss = hub.wait(hub.publish("shape", features))
    assert torch.equal(grad, 2 * features) and loss == 0.5
    return hub.request_heads(timeout=30)


def test_a_consumer_started_before_the_producer_waits_for_it(tmp_path):
    hub = TrainingHub(["shape"], timeout=30)
    keys = KeyStore(tmp_path / "keys.sqlite")
    port = free_port()
    consumer = _CountingConsumer()
    client = ConsumerClient(
        f"http://127.0.0.1:{port}", task="shape", key=keys.issue("shape").secret
    )
    thread, result = _train_in_thread(client, consumer)
    time.sleep(0.5)  # the consumer polls a port nobody listens on yet
    assert thread.is_alive() and not result
    with TrainingServer(hub, keys, port=port):
        heads = _answer_one_step_then_finish(hub)
        thread.join(timeout=30)
    assert result == {"answered": 1} and consumer.steps == 1
    assert torch.equal(heads["shape"]["weight"], consumer.head.weight)


def test_an_unreachable_producer_fails_the_consumer_after_its_wait():
    client = ConsumerClient(f"http://127.0.0.1:{free_port()}", task="shape", key="mmk_x")
    with pytest.raises(ServiceError, match="cannot reach") as caught:
        client.train(
            _CountingConsumer(), lambda ids: torch.zeros(len(ids)), unreachable_timeout=0.3
        )
    assert caught.value.status == 0


def test_a_lost_gradient_is_resent_without_stepping_the_head_twice(tmp_path, monkeypatch):
    hub = TrainingHub(["shape"], timeout=30)
    keys = KeyStore(tmp_path / "keys.sqlite")
    consumer = _CountingConsumer()
    with TrainingServer(hub, keys) as server:
        client = ConsumerClient(server.url, task="shape", key=keys.issue("shape").secret)
        post, lost = client._http.post, []

        def drop_first_gradient(path, **kwargs):
            if path.endswith("/grad") and not lost:
                lost.append(path)
                raise httpx.ConnectError("connection reset before the body was sent")
            return post(path, **kwargs)

        monkeypatch.setattr(client._http, "post", drop_first_gradient)
        thread, result = _train_in_thread(client, consumer)
        _answer_one_step_then_finish(hub)
        thread.join(timeout=30)
    assert lost and result == {"answered": 1} and consumer.steps == 1


def _run(command, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "metamorphosis", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _step_losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(x["phase"], x["epoch"], x["step"], x["losses"]) for x in lines if x["event"] == "step"]


@pytest.mark.slow
def test_remote_training_with_two_consumer_processes_matches_in_process(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict("both", epochs=2, encoder_epochs=1)))
    local = _run(["train", str(config), "--out", str(tmp_path / "local"), "--quiet"])
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    keys = KeyStore(remote_dir / "keys.sqlite")
    secrets = {t: keys.issue(t).secret for t in ("shape", "large")}
    port = free_port()
    consumers = [  # started first: they wait for the producer to come up
        _run(
            [
                "consume",
                f"http://127.0.0.1:{port}",
                "--task",
                t,
                "--key",
                secrets[t],
                "--train",
                str(config),
            ]
        )
        for t in ("shape", "large")
    ]
    producer = _run(
        [
            "train",
            str(config),
            "--out",
            str(remote_dir),
            "--quiet",
            "--remote",
            "--port",
            str(port),
            "--step-timeout",
            "60",
        ]
    )
    processes = {"local": local, "producer": producer, "shape": consumers[0], "large": consumers[1]}
    outputs = {name: p.communicate(timeout=600) for name, p in processes.items()}
    failed = {n: outputs[n][1][-1500:] for n, p in processes.items() if p.returncode != 0}
    assert not failed, failed
    for out, _ in (outputs["shape"], outputs["large"]):  # steps really answered over HTTP
        assert int(re.search(r"answered (\d+) training steps", out).group(1)) > 0, out
    local_record = json.loads((tmp_path / "local" / "run.json").read_text())
    remote_record = json.loads((remote_dir / "run.json").read_text())
    assert remote_record["privacy"]["epsilon"] == local_record["privacy"]["epsilon"]
    local_steps, remote_steps = _step_losses(tmp_path / "local"), _step_losses(remote_dir)
    assert [s[:3] for s in remote_steps] == [s[:3] for s in local_steps] and local_steps
    for (*_, expected), (*_, got) in zip(local_steps, remote_steps, strict=True):
        assert got.keys() == expected.keys()
        for name in expected:
            assert got[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-5), name
    for label, metrics in local_record["metrics"].items():
        assert remote_record["metrics"][label] == pytest.approx(metrics, abs=1e-6), label


def test_the_training_routes_speak_tls(tmp_path):
    """With a certificate the server is https-only and the client verifies it."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    hub = TrainingHub(["shape"], timeout=5)
    keys = KeyStore(tmp_path / "keys.sqlite")
    secret = keys.issue("shape").secret
    auth = {"Authorization": f"Bearer {secret}"}
    server = TrainingServer(hub, keys, ssl_certfile=str(cert), ssl_keyfile=str(key))
    with server:
        assert server.url.startswith("https://")
        with ConsumerClient(server.url, task="shape", key=secret, verify=str(cert)) as client:
            assert client._post("/v1/tasks/shape/train/next").status_code == 204
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{plain}/v1/tasks/shape/train/next", headers=auth, timeout=5)
