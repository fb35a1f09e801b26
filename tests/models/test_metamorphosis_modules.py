"""Cross-SEC / SEC / identity: shapes at every split, the swap, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.validators import ModuleValidator
from torch import nn

from metamorphosis.errors import ConfigError
from metamorphosis.models.encoders import create_encoder
from metamorphosis.models.metamorphosis import CrossSEC, create_module, list_modules


def _assert_no_sample_mixing(module: nn.Module, x: torch.Tensor) -> None:
    """Sample i of a batch must come out as if it had been processed alone.

    In float64, so that the batched and single-sample kernels' float32 rounding
    cannot pass for (or hide) mixing at the 1e-5 tolerance.
    """
    module = module.double().train()
    x = x.double()
    with torch.no_grad():
        batched = module(x)
        for i in range(x.shape[0]):
            torch.testing.assert_close(batched[i : i + 1], module(x[i : i + 1]), atol=1e-5, rtol=0)


def _reference_cross_sec(module: CrossSEC, x: torch.Tensor, swap: bool) -> torch.Tensor:
    """Naive re-implementation from the paper's description, group by group."""
    k = module.groups
    width = x.shape[1] // k
    feats, gates = [], []
    for g in range(k):
        y = module.branches[g](x[:, g * width : (g + 1) * width])
        excite = module.excite[g]
        squeezed = y.mean(dim=(2, 3))
        hidden = torch.relu(excite.fc1(squeezed))
        feats.append(y)
        gates.append(torch.sigmoid(excite.fc2(hidden)))
    scaled = [feats[g] * gates[(g + 1) % k if swap else g][:, :, None, None] for g in range(k)]
    return module.fuse(torch.cat(scaled, dim=1))


@pytest.fixture(scope="module")
def resnet18_features() -> dict[int, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return {k: create_encoder("resnet18", split_index=k).encoder(x) for k in range(1, 10)}


@pytest.mark.parametrize("split", range(1, 10))
@pytest.mark.parametrize("name", ["cross-sec", "sec", "identity"])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_modules_keep_the_shape_at_every_resnet18_split(
    resnet18_features: dict[int, torch.Tensor], split: int, name: str, groups: int
) -> None:
    features = resnet18_features[split]
    module = create_module(name, features.shape[1], groups=groups)
    assert module(features).shape == features.shape


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_modules_match_the_naive_reference(groups: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16, 5, 7)
    for swap in (True, False):
        module = CrossSEC(16, groups=groups, reduction=2, swap=swap)
        torch.testing.assert_close(module(x), _reference_cross_sec(module, x, swap))


def test_cross_sec_differs_from_sec_on_the_same_weights() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4)
    cross = create_module("cross-sec", 16, groups=2)
    sec = create_module("sec", 16, groups=2)
    sec.load_state_dict(cross.state_dict())
    assert not torch.allclose(cross(x), sec(x), atol=1e-4)


def test_single_group_degenerates_to_se() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4)
    cross = create_module("cross-sec", 16, groups=1)
    sec = create_module("sec", 16, groups=1)
    sec.load_state_dict(cross.state_dict())
    torch.testing.assert_close(cross(x), sec(x))


def test_identity_is_parameter_free_and_returns_its_input() -> None:
    module = create_module("identity", 24, groups=5)
    x = torch.randn(2, 24, 3, 3)
    assert module(x) is x
    assert list(module.parameters()) == []


def test_reduction_sets_the_bottleneck() -> None:
    module = create_module("cross-sec", 64, groups=2, reduction=4)
    assert module.excite[0].fc1.out_features == 8
    assert create_module("sec", 8, groups=4, reduction=16).excite[0].fc1.out_features == 1


def test_bad_arguments_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        create_module("cross-sec", 10, groups=4)
    assert "model.groups=4" in str(info.value) and "10" in str(info.value)
    with pytest.raises(ConfigError, match="model.groups=0"):
        create_module("sec", 8, groups=0)
    with pytest.raises(ConfigError, match="model.reduction=0"):
        create_module("sec", 8, reduction=0)
    with pytest.raises(ConfigError, match="channels=0"):
        create_module("identity", 0)


@pytest.mark.parametrize("name", list_modules())
def test_modules_are_opacus_compatible(name: str) -> None:
    module = create_module(name, 16)
    assert ModuleValidator.validate(module, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@settings(max_examples=15, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 3, 4]),
    width=st.integers(1, 6),
    height=st.integers(1, 7),
    side=st.integers(1, 7),
    swap=st.booleans(),
)
def test_modules_keep_shape_and_do_not_mix_samples(
    groups: int, width: int, height: int, side: int, swap: bool
) -> None:
    torch.manual_seed(0)
    module = CrossSEC(groups * width, groups=groups, swap=swap)
    x = torch.randn(3, groups * width, height, side)
    assert module(x).shape == x.shape
    _assert_no_sample_mixing(module, x)
