"""Producer cost: sizes, published-feature sizes and latencies (paper Tables 9–10)."""

from __future__ import annotations

import math

import pytest
import torch

from metamorphosis.audit.cost import format_cost_table, module_size, producer_cost
from metamorphosis.config import config_from_dict
from metamorphosis.errors import ConfigError
from metamorphosis.models.producer import (
    build_heads,
    build_network,
    build_producer,
    count_parameters,
)
from tiny import tiny_config_dict

INPUT = (3, 16, 16)


@pytest.fixture(scope="module")
def tiny():
    config = config_from_dict(tiny_config_dict()).with_label_classes({"shape": 3})
    torch.manual_seed(0)
    network = build_network(config)
    producer = build_producer(config, network, INPUT)
    heads = build_heads(config.tasks, network, INPUT)
    producer.train()
    cost = producer_cost(producer, heads, repeats=3, warmup=1)
    return producer, heads, cost


def _stored_bytes(module: torch.nn.Module) -> int:
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    return count_parameters(module) * 4 + buffers


def test_sizes_are_float32_parameters_plus_buffers(tiny):
    producer, heads, cost = tiny
    encoder = cost["encoder"]
    assert encoder["parameters"] == count_parameters(producer.encoder)
    assert encoder["bytes"] == _stored_bytes(producer.encoder)
    assert encoder["size_mb"] == pytest.approx(encoder["bytes"] / 1e6)
    assert set(cost["modules"]) == set(producer.task_modules)
    for name, entry in cost["modules"].items():
        assert entry["bytes"] == _stored_bytes(producer.task_modules[name])
        assert entry["role"] == ("private" if name in producer.private_attributes else "public")
    assert set(cost["heads"]) == set(heads)
    for name, entry in cost["heads"].items():
        assert entry["parameters"] == count_parameters(heads[name])
    assert cost["producer"]["bytes"] == _stored_bytes(producer)


def test_feature_sizes(tiny):
    producer, _, cost = tiny
    assert set(cost["features"]) == set(producer.tasks)
    with torch.no_grad():
        shape = producer.eval().encode(torch.zeros(1, *INPUT)).shape[1:]
    producer.train()
    for entry in cost["features"].values():
        assert entry["shape"] == list(shape)
        assert entry["size_kb"] == pytest.approx(math.prod(shape) * 4 / 1000)
    assert cost["encoder"]["feature_kb"] == pytest.approx(math.prod(shape) * 4 / 1000)


def test_latencies_and_protocol(tiny):
    producer, _, cost = tiny
    latencies = [cost["encoder"]["latency_ms"], cost["producer"]["publish_latency_ms"]]
    latencies += [entry["latency_ms"] for entry in cost["modules"].values()]
    assert all(math.isfinite(v) and v > 0 for v in latencies)
    timing = cost["timing"]
    assert timing["device"] == "cpu" and timing["torch_threads"] == torch.get_num_threads()
    assert (timing["repeats"], timing["warmup"], timing["batch_size"]) == (3, 1, 1)
    assert producer.training  # mode restored


def test_table_names_every_component(tiny):
    producer, heads, cost = tiny
    table = format_cost_table(cost)
    for name in [*producer.task_modules, *heads]:
        assert f"`{name}`" in table
    assert "encoder" in table and "| Component |" in table
    assert "1 torch thread" in table or f"{torch.get_num_threads()} torch thread" in table


def test_module_size_counts_buffers():
    layer = torch.nn.BatchNorm2d(4)
    size = module_size(layer)
    assert size["parameters"] == 8
    assert size["bytes"] == 8 * 4 + 8 * 4 + 8  # weight+bias, running stats, int64 counter


def test_bad_protocol(tiny):
    producer, _, _ = tiny
    with pytest.raises(ConfigError, match="repeats"):
        producer_cost(producer, repeats=0)
