"""Consumer heads: output shapes per task kind, norms, no sample mixing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metamorphosis.config import LabelSpec
from metamorphosis.errors import ConfigError
from metamorphosis.models.encoders import RESNET_CHILDREN, create_encoder
from metamorphosis.models.heads import task_layer, upsampling_decoder
from metamorphosis.models.release import Release

SPECS = {
    "binary": LabelSpec("smile", kind="binary"),
    "multiclass": LabelSpec("age", kind="multiclass", num_classes=5),
    "segmentation": LabelSpec("seg", kind="segmentation", num_classes=4),
    "depth": LabelSpec("depth", kind="depth"),
    "normals": LabelSpec("normals", kind="normals"),
}
EXPECTED = {
    "binary": (1,),
    "multiclass": (5,),
    "segmentation": (4, 32, 32),
    "depth": (1, 32, 32),
    "normals": (3, 32, 32),
}
NETWORKS = [
    ("test_resnet", 1),
    ("test_resnet", 4),
    ("test_resnet", 5),
    ("test_resnet", 8),
    ("test_resnet", 9),
    ("test_segnet", 1),
    ("test_segnet", 3),
    ("test_segnet", 5),
]


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


@pytest.mark.parametrize("name,split", NETWORKS)
@pytest.mark.parametrize("kind", list(SPECS))
def test_head_output_shapes(name: str, split: int, kind: str) -> None:
    network = create_encoder(name, split_index=split)
    head = network.make_head(SPECS[kind], (32, 32))
    features = network.encoder(torch.randn(2, 3, 32, 32))
    assert tuple(head(features).shape) == (2, *EXPECTED[kind])


@pytest.mark.parametrize("name", ["resnet18", "segnet"])
@pytest.mark.parametrize("kind", ["multiclass", "segmentation", "normals"])
def test_full_size_head_output_shapes(name: str, kind: str) -> None:
    network = create_encoder(name, split_index=5)
    head = network.make_head(SPECS[kind], (64, 64))
    features = torch.randn(1, *network.feature_shape((3, 64, 64)))
    expected = EXPECTED[kind][:1] + (64, 64) if len(EXPECTED[kind]) == 3 else EXPECTED[kind]
    assert tuple(head(features).shape) == (1, *expected)


@pytest.mark.parametrize("name", ["test_resnet", "test_segnet"])
def test_dense_heads_restore_odd_input_sizes(name: str) -> None:
    network = create_encoder(name, split_index=3)
    head = network.make_head(SPECS["depth"], (50, 70))
    out = head(network.encoder(torch.randn(2, 3, 50, 70)))
    assert tuple(out.shape) == (2, 1, 50, 70)


@pytest.mark.parametrize("split", [1, 5, 9])
def test_resnet_classification_head_continues_the_network(split: int) -> None:
    head = create_encoder("test_resnet", split_index=split).make_head(SPECS["multiclass"], (32, 32))
    names = [name for name, _ in head.named_children()]
    assert names == [*RESNET_CHILDREN[split:9], "flatten", "fc"]
    assert head.fc.in_features == 64 and head.fc.out_features == 5


def test_make_head_returns_fresh_heads() -> None:
    network = create_encoder("test_resnet", split_index=5)
    first, second = (network.make_head(SPECS["binary"], (32, 32)) for _ in range(2))
    assert not any(a is b for a, b in zip(first.parameters(), second.parameters(), strict=True))


@pytest.mark.parametrize("name", ["test_resnet", "test_segnet"])
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_heads_use_the_encoder_norm(name: str, norm: str) -> None:
    network = create_encoder(name, split_index=2, norm=norm)
    for kind in ("binary", "segmentation"):
        modules = list(network.make_head(SPECS[kind], (32, 32)).modules())
        has_batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in modules)
        has_group_norm = any(isinstance(m, nn.GroupNorm) for m in modules)
        assert has_batch_norm == (norm == "batch") and has_group_norm == (norm == "group")


@pytest.mark.parametrize(
    "name,split", [("test_resnet", 3), ("test_resnet", 9), ("test_segnet", 2), ("test_segnet", 5)]
)
@pytest.mark.parametrize("kind", list(SPECS))
def test_heads_do_not_mix_samples_in_train_mode(name: str, split: int, kind: str) -> None:
    torch.manual_seed(0)
    network = create_encoder(name, split_index=split)
    head = network.make_head(SPECS[kind], (32, 32))
    features = torch.randn(4, *network.feature_shape((3, 32, 32)))
    _assert_no_sample_mixing(head, features)


def test_head_argument_errors() -> None:
    network = create_encoder("test_resnet", split_index=5)
    with pytest.raises(ConfigError, match="input_hw"):
        network.make_head(SPECS["depth"], (0, 32))
    with pytest.raises(ConfigError, match="num_classes"):
        network.make_head(LabelSpec("age", kind="multiclass"), (32, 32))
    with pytest.raises(ConfigError, match="too small"):
        create_encoder("test_segnet", split_index=1).make_head(SPECS["depth"], (16, 16))


def test_shared_builders() -> None:
    decoder = upsampling_decoder(8, 16, 3, (20, 24), "group")
    assert tuple(decoder(torch.randn(2, 8, 5, 6)).shape) == (2, 3, 20, 24)
    layer = task_layer(8, 4)
    assert tuple(layer(torch.randn(2, 8, 9, 9)).shape) == (2, 4, 9, 9)


@pytest.mark.parametrize("code_size", [1, 2])
def test_code_head_reads_back_the_expanded_code(code_size: int) -> None:
    """A pooled release is the code expanded (1×1 conv) and upsampled to the map: the
    code head's pool undoes the upsampling exactly, so its MLP sees the code's linear
    image, one vector per region; classification kinds only, dense heads unchanged."""
    torch.manual_seed(0)
    network = create_encoder("test_resnet", split_index=5)
    channels, height, width = network.feature_shape((3, 32, 32))
    release = Release(channels, bottleneck_channels=4, code_size=code_size).eval()
    features = network.encoder(torch.randn(3, 3, 32, 32))
    with torch.no_grad():
        released = release(features)
        code, _ = release.code(features)
    assert release.expand is not None and tuple(released.shape) == (3, channels, height, width)
    head = network.make_head(SPECS["multiclass"], (32, 32), code_size=code_size)
    assert [name for name, _ in head.named_children()][:2] == ["pool", "flatten"]
    torch.testing.assert_close(head.pool(released), release.expand(code))
    assert tuple(head(released).shape) == (3, 5)
    _assert_no_sample_mixing(head, released)
    dense = network.make_head(SPECS["depth"], (32, 32), code_size=code_size)
    assert not any(isinstance(m, nn.Linear) for m in dense.modules())
