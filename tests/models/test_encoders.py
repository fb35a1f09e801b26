"""Split encoders: torchvision compatibility, split shapes, Opacus-safety, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from opacus.validators import ModuleValidator
from torch import nn

from metamorphosis.errors import ConfigError
from metamorphosis.models.encoders import (
    RESNET_CHILDREN,
    ResNet,
    create_encoder,
    load_pretrained,
)

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


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


def test_resnet18_state_dict_matches_torchvision() -> None:
    ours = ResNet(norm="batch").state_dict()
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert _shapes(ours) == _shapes(theirs)


def test_resnet18_computes_torchvision_function() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    ours = ResNet(norm="batch").eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=1e-4)


def test_split_encoder_keeps_torchvision_names() -> None:
    encoder = create_encoder("resnet18", split_index=9, norm="batch").encoder
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    expected = {k: v for k, v in _shapes(theirs).items() if not k.startswith("fc.")}
    assert _shapes(encoder.state_dict()) == expected


def test_group_norm_variant_has_no_batch_norm_and_same_parameter_names() -> None:
    encoder = create_encoder("resnet18", split_index=9).encoder
    assert not any(isinstance(m, BATCH_NORMS) for m in encoder.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in encoder.modules())
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    expected = {
        k: v
        for k, v in _shapes(theirs).items()
        if not k.startswith("fc.") and not k.endswith(STAT_SUFFIXES)
    }
    assert _shapes(encoder.state_dict()) == expected


@pytest.mark.parametrize("name,split", [("resnet18", 9), ("segnet", 5), ("test_resnet", 9)])
def test_group_norm_encoders_pass_opacus_validation(name: str, split: int) -> None:
    encoder = create_encoder(name, split_index=split).encoder
    assert ModuleValidator.validate(encoder, strict=False) == []
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in encoder.modules())


def test_batch_norm_encoder_is_flagged_by_opacus() -> None:
    encoder = create_encoder("test_resnet", split_index=9, norm="batch").encoder
    assert ModuleValidator.validate(encoder, strict=False)


@pytest.mark.parametrize(
    "split,shape",
    [
        (1, (64, 32, 32)),
        (2, (64, 32, 32)),
        (3, (64, 32, 32)),
        (4, (64, 16, 16)),
        (5, (64, 16, 16)),
        (6, (128, 8, 8)),
        (7, (256, 4, 4)),
        (8, (512, 2, 2)),
        (9, (512, 1, 1)),
    ],
)
def test_resnet18_split_shapes(split: int, shape: tuple[int, int, int]) -> None:
    network = create_encoder("resnet18", split_index=split)
    assert [name for name, _ in network.encoder.named_children()] == list(RESNET_CHILDREN[:split])
    assert network.feature_shape((3, 64, 64)) == shape
    assert tuple(network.encoder(torch.zeros(2, 3, 64, 64)).shape) == (2, *shape)


@pytest.mark.parametrize("split", [1, 2, 3, 4, 5])
def test_segnet_split_shapes(split: int) -> None:
    channels = (64, 128, 256, 512, 512)[split - 1]
    side = 64 // 2**split
    assert create_encoder("segnet", split_index=split).feature_shape((3, 64, 64)) == (
        channels,
        side,
        side,
    )
    tiny = create_encoder("test_segnet", split_index=split)
    assert tiny.feature_shape((3, 64, 64)) == ((8, 8, 16, 16, 16)[split - 1], side, side)


def test_in_channels_is_honoured() -> None:
    network = create_encoder("test_resnet", split_index=5, in_channels=1)
    assert network.feature_shape((1, 32, 32)) == (8, 8, 8)


@pytest.mark.parametrize(
    "name,split,allowed",
    [
        ("resnet18", 0, "1..9"),
        ("test_resnet", 10, "1..9"),
        ("segnet", 6, "1..5"),
        ("test_segnet", True, "1..5"),
    ],
)
def test_split_index_out_of_range(name: str, split: int, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_encoder(name, split_index=split)
    message = str(info.value)
    assert "model.split_index" in message and repr(split) in message and allowed in message


def test_unknown_norm_and_bad_channels() -> None:
    with pytest.raises(ConfigError, match="model.norm='layer'"):
        create_encoder("test_resnet", split_index=5, norm="layer")
    with pytest.raises(ConfigError, match="in_channels=0"):
        create_encoder("test_resnet", split_index=5, in_channels=0)


def test_feature_shape_keeps_mode_and_batch_norm_statistics() -> None:
    network = create_encoder("test_resnet", split_index=5, norm="batch")
    before = {k: v.clone() for k, v in network.encoder.state_dict().items()}
    network.encoder.train()
    network.feature_shape((3, 32, 32))
    assert network.encoder.training
    for key, value in network.encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_feature_shape_rejects_too_small_input() -> None:
    with pytest.raises(ConfigError, match="does not fit encoder 'test_segnet'"):
        create_encoder("test_segnet", split_index=5).feature_shape((3, 8, 8))


@pytest.mark.parametrize(
    "name,split",
    [
        ("test_resnet", 3),
        ("test_resnet", 5),
        ("test_resnet", 9),
        ("test_segnet", 2),
        ("test_segnet", 5),
    ],
)
def test_encoders_do_not_mix_samples_in_train_mode(name: str, split: int) -> None:
    torch.manual_seed(0)
    network = create_encoder(name, split_index=split)
    _assert_no_sample_mixing(network.encoder, torch.randn(4, 3, 32, 32))


def test_load_pretrained_reads_a_torchvision_format_state_dict(tmp_path) -> None:
    source = ResNet(width=8, blocks=(1, 1, 1, 1), norm="batch")
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    for norm in ("batch", "group"):
        network = create_encoder("test_resnet", split_index=6, norm=norm)
        load_pretrained(network, path)
        for key, value in network.encoder.state_dict().items():
            assert torch.equal(value, source.state_dict()[key]), key


def test_load_pretrained_errors(tmp_path) -> None:
    network = create_encoder("test_resnet", split_index=5)
    with pytest.raises(ConfigError, match="no such file"):
        load_pretrained(network, tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read a state dict"):
        load_pretrained(network, garbage)
    partial = tmp_path / "partial.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, partial)
    with pytest.raises(ConfigError, match="lacks"):
        load_pretrained(network, partial)
    wider = tmp_path / "wider.pt"
    torch.save(ResNet(width=16, blocks=(1, 1, 1, 1)).state_dict(), wider)
    with pytest.raises(ConfigError, match="wrong shape"):
        load_pretrained(network, wider)
