"""``privacy.private_heads`` over ``--remote``: each DP step carries its head's DP-SGD
settings, the consumer takes exactly that step, and a remote run is the in-process run."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import yaml
from torch import nn

from metamorphosis.config import LabelSpec, config_from_dict
from metamorphosis.errors import MetaMorphosisError
from metamorphosis.experiment import train_run
from metamorphosis.privacy.engine import DPEngine, HeadDP
from metamorphosis.serve.client import ConsumerClient
from metamorphosis.serve.keys import KeyStore
from metamorphosis.serve.training import TrainingServer
from metamorphosis.train import remote
from metamorphosis.train.remote import (
    ConsumerSide,
    TrainingHub,
    head_dp_from_text,
    remote_consumer,
)
from metamorphosis.train.split import Consumer
from tiny import tiny_config_dict


def _consumer(lr: float = 1.0) -> Consumer:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Flatten(0))
    return Consumer(LabelSpec("shape", kind="binary"), head, torch.optim.SGD(head.parameters(), lr))


def _clipped_step(consumer: Consumer, features, target, dp: HeadDP) -> dict[str, torch.Tensor]:
    """The weights after one DP-SGD step without noise, computed by hand: each sample's
    gradient clipped to C over every parameter, summed, divided by the expected batch."""
    params = dict(consumer.head.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for x, y in zip(features, target, strict=True):
        loss = nn.functional.binary_cross_entropy_with_logits(consumer.head(x[None]), y[None])
        grads = torch.autograd.grad(loss, list(params.values()))
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        scale = min(1.0, dp.max_grad_norm / float(norm))
        for name, grad in zip(params, grads, strict=True):
            total[name] += scale * grad
    lr = consumer.optimizer.param_groups[0]["lr"]
    return {n: p.detach() - lr * total[n] / dp.expected_batch_size for n, p in params.items()}


def test_a_dp_step_carries_its_settings_and_the_head_takes_exactly_that_step(tmp_path):
    hub = TrainingHub(["shape"], timeout=30)
    keys = KeyStore(tmp_path / "keys.sqlite")
    consumer = _consumer()
    dp = HeadDP(noise_multiplier=0.0, max_grad_norm=0.05, expected_batch_size=16)
    features, target = torch.randn(3, 3, 2, 2), torch.tensor([0.0, 1.0, 1.0])
    expected = _clipped_step(_consumer(), features, target, dp)
    side = ConsumerSide(consumer, require_dp=True)
    result = {}
    with TrainingServer(hub, keys) as server:
        client = ConsumerClient(server.url, task="shape", key=keys.issue("shape").secret)
        thread = threading.Thread(
            target=lambda: result.update(answered=client.train(side, lambda ids: target))
        )
        thread.start()
        hub.current_ids = ["a", "b", "c"]
        hub.wait(hub.publish("shape", features, dp))
        heads = hub.request_heads(timeout=30)
        thread.join(timeout=30)
    assert result == {"answered": 1} and side.dp_steps == 1
    assert sorted(heads["shape"]) == ["1.bias", "1.weight"]  # sent without the DP wrapper
    for name, weight in expected.items():
        torch.testing.assert_close(heads["shape"][name], weight)
    assert side.head is consumer.head and not hasattr(consumer.head, "_module")
    # the step moved the head by at most lr · n · C / B: far less than a plain step
    start = _consumer().head.state_dict()
    moved = max(float((heads["shape"][n] - start[n]).abs().max()) for n in expected)
    assert 0 < moved <= 3 * 0.05 / 16 + 1e-7


def test_noise_is_added_at_the_settings_multiplier():
    """Zero features give every sample a gradient of norm > C on the bias alone, so the
    clipped sum is known; what the step adds beyond it is the noise, of sd σ·C/B."""
    consumer = _consumer(lr=1.0)
    side = ConsumerSide(consumer)
    dp = HeadDP(noise_multiplier=3.0, max_grad_norm=1e-3, expected_batch_size=4)
    before = side.head[1].weight.detach().clone()
    side.step(torch.zeros(2, 3, 2, 2), torch.ones(2), dp)
    weight_noise = (side.head[1].weight.detach() - before).flatten()  # zero input: no signal
    assert side.dp_steps == 1
    assert float(weight_noise.std()) == pytest.approx(3.0 * 1e-3 / 4, rel=0.5)
    side.step(torch.zeros(2, 3, 2, 2), torch.ones(2), None)  # a plain step unwraps the head
    assert not hasattr(consumer.head, "_module")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"noise_multiplier": 1}', "must have exactly"),
        ('{"noise_multiplier": -1, "max_grad_norm": 1, "expected_batch_size": 4}', "noise_m"),
        ('{"noise_multiplier": 1, "max_grad_norm": 0, "expected_batch_size": 4}', "max_grad"),
        ('{"noise_multiplier": 1, "max_grad_norm": 1, "expected_batch_size": 2.5}', "expected"),
        ('{"noise_multiplier": NaN, "max_grad_norm": 1, "expected_batch_size": 4}', "noise_m"),
        ('{"noise_multiplier": true, "max_grad_norm": 1, "expected_batch_size": 4}', "noise_m"),
    ],
)
def test_dp_settings_on_the_wire_are_checked(text, message):
    with pytest.raises(MetaMorphosisError, match=message):
        head_dp_from_text(text)


def test_the_wire_form_round_trips_and_absent_means_plain():
    dp = HeadDP(2.0, 1.5, 16)
    assert head_dp_from_text(remote.head_dp_to_text(dp)) == dp
    assert head_dp_from_text(None) is None


def test_a_private_heads_consumer_refuses_a_step_without_dp():
    side = ConsumerSide(_consumer(), require_dp=True)
    with pytest.raises(MetaMorphosisError, match="without DP-SGD settings"):
        side.step(torch.zeros(2, 3, 2, 2), torch.ones(2), None)


def _noiseless(monkeypatch) -> list[HeadDP]:
    """Every DP-SGD step, the producer's and every head's, without its noise (clipping
    stays), so a remote and an in-process run compare weight for weight; the remote
    heads' settings as sent."""
    wrap, head = DPEngine.wrap, remote.dp_sgd_head
    sent: list[HeadDP] = []

    def wrap_noiseless(self, model, optimizer, **blocks):
        model, optimizer = wrap(self, model, optimizer, **blocks)
        optimizer.noise_multiplier = 0.0  # the accountant still counts the configured noise
        return model, optimizer

    def head_noiseless(model, optimizer, settings):
        sent.append(settings)
        return head(
            model, optimizer, HeadDP(0.0, settings.max_grad_norm, settings.expected_batch_size)
        )

    monkeypatch.setattr(DPEngine, "wrap", wrap_noiseless)
    monkeypatch.setattr(remote, "dp_sgd_head", head_noiseless)
    return sent


def _step_losses(run_dir) -> list[dict[str, float]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["losses"] for x in lines if x["event"] == "step"]


def test_remote_private_heads_train_the_in_process_run(tmp_path, monkeypatch):
    sent = _noiseless(monkeypatch)
    raw = tiny_config_dict("input", {"private_heads": True}, epochs=1, max_steps_per_epoch=3)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    local = train_run(config_from_dict(raw), tmp_path / "local", progress=False)
    tasks = ["shape", "large"]
    hub = TrainingHub(tasks, timeout=60)
    keys = KeyStore(tmp_path / "keys.sqlite")
    config = config_from_dict(raw)
    # built before the producer starts: a head's initialisation reseeds torch's global RNG
    sides = {t: remote_consumer(config, t) for t in tasks}
    answered: dict[str, tuple[int, int]] = {}

    def consume(url: str, task: str, secret: str) -> None:
        side, labels_of = sides[task]
        with ConsumerClient(url, task=task, key=secret) as client:
            answered[task] = (client.train(side, labels_of), side.dp_steps)

    with TrainingServer(hub, keys) as server:
        threads = [
            threading.Thread(target=consume, args=(server.url, t, keys.issue(t).secret))
            for t in tasks
        ]
        for thread in threads:
            thread.start()
        record = train_run(config_from_dict(raw), tmp_path / "remote", progress=False, remote=hub)
        for thread in threads:
            thread.join(timeout=60)
    local_steps, remote_steps = (_step_losses(tmp_path / d) for d in ("local", "remote"))
    steps = local["privacy"]["steps"]  # no empty Poisson draw among these few
    assert steps > 0 and answered == dict.fromkeys(tasks, (steps, steps))  # all on DP-SGD
    blocks = 1 + 3  # the producer, the two public heads, the private attribute's
    clip = config_from_dict(raw).privacy.max_grad_norm
    assert set(sent) == {HeadDP(1.0 * blocks**0.5, clip, 16)}  # σ·√blocks, σ = 1
    privacy = record["privacy"]
    assert privacy["epsilon"] == local["privacy"]["epsilon"]
    assert privacy["remote_heads"] == tasks and local["privacy"]["remote_heads"] == []
    assert "heads of shape, large trained in their consumers' processes" in privacy["scope"]
    for label, metrics in local["metrics"].items():
        assert record["metrics"][label] == pytest.approx(metrics, abs=1e-5), label
    assert len(remote_steps) == len(local_steps) > 0
    for expected, got in zip(local_steps, remote_steps, strict=True):
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
