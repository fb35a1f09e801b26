"""Opacus per-sample gradients through encoders and modules equal a per-sample loop."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from metamorphosis.models.encoders import create_encoder
from metamorphosis.models.metamorphosis import create_module, list_modules


def _loss(out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A per-sample sum (no batch statistics), like the project's losses."""
    return (out * weight).sum() + 0.5 * (out**2).sum()


def _loop_grads(model: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    grads: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        _loss(model(x[i : i + 1]), weight[i : i + 1]).backward()
        for name, param in model.named_parameters():
            grads[name].append(param.grad.detach().clone())
    return {name: torch.stack(values) for name, values in grads.items()}


def _opacus_grads(
    model: nn.Module, x: torch.Tensor, weight: torch.Tensor
) -> dict[str, torch.Tensor]:
    wrapped = GradSampleModule(model, loss_reduction="sum")
    # An input that requires grad keeps torch from warning about full backward hooks.
    _loss(wrapped(x.clone().requires_grad_(True)), weight).backward()
    return {name: p.grad_sample.detach().clone() for name, p in model.named_parameters()}


def _assert_per_sample_grads_match(model: nn.Module, x: torch.Tensor) -> None:
    model = model.double().train()
    x = x.double()
    with torch.no_grad():
        weight = torch.randn_like(model(x))
    expected = _loop_grads(copy.deepcopy(model), x, weight)
    actual = _opacus_grads(model, x, weight)
    assert actual.keys() == expected.keys() and actual
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


def test_encoder_and_cross_sec_per_sample_grads() -> None:
    torch.manual_seed(0)
    network = create_encoder("test_resnet", split_index=5)
    channels = network.feature_shape((3, 32, 32))[0]
    model = nn.Sequential(network.encoder, create_module("cross-sec", channels, groups=2))
    _assert_per_sample_grads_match(model, torch.randn(4, 3, 32, 32))


def test_segnet_encoder_per_sample_grads() -> None:
    torch.manual_seed(0)
    _assert_per_sample_grads_match(
        create_encoder("test_segnet", split_index=3).encoder, torch.randn(3, 3, 16, 16)
    )


@pytest.mark.parametrize("name", ["cross-sec", "sec"])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_module_per_sample_grads(name: str, groups: int) -> None:
    torch.manual_seed(0)
    module = create_module(name, 16, groups=groups, reduction=2)
    _assert_per_sample_grads_match(module, torch.randn(5, 16, 4, 4))


@pytest.mark.parametrize("name", list_modules())
def test_grad_sample_module_wraps_every_module(name: str) -> None:
    module = create_module(name, 8)
    wrapped = GradSampleModule(module, loss_reduction="sum")
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = wrapped(x)
    assert out.shape == x.shape
    out.sum().backward()
    for param in module.parameters():
        assert param.grad_sample.shape == (2, *param.shape)
