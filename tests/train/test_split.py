"""Split learning with a DP producer: per-sample gradients, no sample mixing.

Opacus clips per-sample gradients of the producer computed from the feature
gradients that consumers send back. These tests check the per-sample
gradients against a loop over single samples (the naive reference), with the
task-privacy SSIM term included, and that no head mixes samples.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import GradSampleModule

from metamorphosis.config import config_from_dict
from metamorphosis.models.producer import build_heads, build_network, build_producer
from metamorphosis.train.split import Consumer, producer_step

INPUT = (3, 16, 16)


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons: float32 rounding differs between batched and single kernels."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _setup(kind_of_tasks: str = "multiclass", module: str = "cross-sec"):
    config = config_from_dict(
        {
            "model": {"encoder": "test_resnet", "split_index": 5, "module": module},
            "tasks": [
                {"name": "a", "kind": kind_of_tasks, "num_classes": 3},
                {"name": "b", "kind": "binary"},
            ],
            "private_attributes": [{"name": "p", "kind": "binary"}],
            "privacy": {"mode": "both", "omega": 0.5},
        }
    )
    torch.manual_seed(0)
    network = build_network(config)
    producer = build_producer(config, network, INPUT)
    heads = build_heads(config.all_labels, network, INPUT)
    consumers = {
        spec.name: Consumer(
            spec, heads[spec.name], torch.optim.SGD(heads[spec.name].parameters(), lr=0.1)
        )
        for spec in config.all_labels
    }
    n = 5
    images = torch.randn(n, *INPUT)
    targets = {
        "a": torch.randint(0, 3, (n,)),
        "b": torch.randint(0, 2, (n,)).double(),
        "p": torch.randint(0, 2, (n,)).double(),
    }
    return config, producer, consumers, images, targets


class _NoStep(torch.optim.SGD):
    """Keeps gradients for inspection: the step is a no-op."""

    def step(self, closure=None):  # noqa: D102
        return None


def _no_update_consumers(consumers):
    return {
        name: Consumer(c.spec, c.head, _NoStep(c.head.parameters(), lr=0.0))
        for name, c in consumers.items()
    }


@pytest.mark.parametrize("module", ["cross-sec", "sec"])
def test_per_sample_gradients_equal_a_per_sample_loop(module):
    config, producer, consumers, images, targets = _setup(module=module)
    names = [s.name for s in config.all_labels]
    consumers = _no_update_consumers(consumers)
    reference_producer = copy.deepcopy(producer)

    gsm = GradSampleModule(producer, loss_reduction="mean")
    producer_step(
        gsm, _NoStep(producer.parameters(), lr=0.0), images, targets, consumers, names, omega=0.5
    )
    per_sample = {n: p.grad_sample.clone() for n, p in producer.named_parameters()}

    for i in range(images.shape[0]):
        single_targets = {k: v[i : i + 1] for k, v in targets.items()}
        optimizer = _NoStep(reference_producer.parameters(), lr=0.0)
        producer_step(
            reference_producer,
            optimizer,
            images[i : i + 1],
            single_targets,
            consumers,
            names,
            omega=0.5,
        )
        for name, parameter in reference_producer.named_parameters():
            torch.testing.assert_close(
                per_sample[name][i], parameter.grad, atol=1e-9, rtol=1e-7, msg=f"{name}, sample {i}"
            )


def test_consumer_gradient_for_a_sample_depends_on_that_sample_only():
    config, producer, consumers, images, targets = _setup()
    consumers = _no_update_consumers(consumers)
    n = images.shape[0]
    with torch.no_grad():
        features = producer(images, names=["a", "b", "p"])
    for name, consumer in consumers.items():
        batch_grad = consumer.step(features[name], targets[name]).grad
        for i in range(n):
            single = consumer.step(features[name][i : i + 1], targets[name][i : i + 1]).grad
            # batch losses are means: the batch gradient is the single one over n
            torch.testing.assert_close(batch_grad[i : i + 1] * n, single, atol=1e-10, rtol=1e-8)


def test_step_trains_heads_and_producer():
    config, producer, consumers, images, targets = _setup()
    names = [s.name for s in config.all_labels]
    before_producer = copy.deepcopy(producer.state_dict())
    before_head = copy.deepcopy(consumers["a"].head.state_dict())
    optimizer = torch.optim.SGD(producer.parameters(), lr=0.1)
    result = producer_step(producer, optimizer, images, targets, consumers, names, omega=0.5)
    assert set(result.losses) == {"a", "b", "p"}
    assert result.terms["ssim_term"] > 0
    changed = [
        k for k, v in producer.state_dict().items() if not torch.equal(v, before_producer[k])
    ]
    assert any(k.startswith("encoder.") for k in changed)
    assert all(any(k.startswith(f"task_modules.{n}.") for k in changed) for n in names)
    head_changed = [
        k for k, v in consumers["a"].head.state_dict().items() if not torch.equal(v, before_head[k])
    ]
    assert head_changed
