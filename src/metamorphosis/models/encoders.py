"""Split encoders: the producer-side half of a network and its consumer heads.

A :class:`SplitNetwork` cuts a backbone at ``split_index``. The producer runs
``network.encoder`` (then one metamorphosis module per task) and publishes the
result; each consumer builds its own head with :meth:`SplitNetwork.make_head`.
Keeping the cut and the head construction in one object is what guarantees
that heads always fit the published feature shape.

Entries of :data:`ENCODERS`:

* ``resnet18`` — our ResNet-18 with torchvision's exact parameter names (its
  state dicts load) but Opacus-safe: non-in-place ReLUs and an out-of-place
  residual sum (torchvision's ``out += identity`` fails under Opacus hooks).
  ``split_index`` k ∈ 1..9 counts torchvision's top-level children kept on the
  producer side (conv1, bn1, relu, maxpool, layer1..4, avgpool).
* ``segnet`` — MTAN's SegNet encoder (k ∈ 1..5 encoder stages on the
  producer side) with a mirrored decoder on the consumer side.
* ``test_resnet`` / ``test_segnet`` — tiny versions for CPU unit tests.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import LabelSpec
from ..errors import ConfigError
from ..registry import Registry
from .heads import (
    classification_head,
    code_head,
    task_layer,
    upsample_stage,
    upsampling_decoder,
)
from .layers import check_norm, conv_norm_relu, norm_layer

__all__ = [
    "ENCODERS",
    "RESNET_CHILDREN",
    "BasicBlock",
    "ResNet",
    "SplitNetwork",
    "ResNetSplit",
    "SegNetSplit",
    "create_encoder",
    "list_encoders",
    "load_pretrained",
]

RESNET_CHILDREN = (
    "conv1",
    "bn1",
    "relu",
    "maxpool",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "avgpool",
    "fc",
)

NamedLayers = list[tuple[str, nn.Module]]


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (same parameter names), made Opacus-safe.

    The residual is added out of place and the ReLU is not in place: Opacus'
    backward hooks hand out views that an in-place add would modify.
    """

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), norm_layer(norm, planes)
            )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of :class:`BasicBlock` s laid out like torchvision's.

    Top-level children come in torchvision's order (:data:`RESNET_CHILDREN`)
    so that a split index means the same thing as on torchvision's model.

    Args:
        width: channels of the stem and ``layer1`` (64 for ResNet-18); layer i
            has ``width * 2**(i-1)``.
        blocks: BasicBlocks per layer ((2, 2, 2, 2) for ResNet-18).
        norm: ``group`` (GroupNorm, sample-independent) or ``batch``.
        in_channels: image channels.
        num_classes: outputs of ``fc``.
    """

    def __init__(
        self,
        *,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        norm: str = "group",
        in_channels: int = 3,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"blocks={tuple(blocks)!r}: a ResNet has 4 layers")
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(norm, width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, count in enumerate(blocks):
            planes = width * 2**i
            self.add_module(f"layer{i + 1}", _resnet_layer(inplanes, planes, count, i, norm))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        _init_resnet(self)

    def forward(self, x: Tensor) -> Tensor:
        for name, child in self.named_children():
            if name == "fc":
                break
            x = child(x)
        return self.fc(torch.flatten(x, 1))


def _resnet_layer(inplanes: int, planes: int, count: int, index: int, norm: str) -> nn.Sequential:
    stride = 1 if index == 0 else 2
    return nn.Sequential(
        *(
            BasicBlock(inplanes if b == 0 else planes, planes, stride if b == 0 else 1, norm)
            for b in range(count)
        )
    )


def _init_resnet(model: nn.Module) -> None:
    """torchvision's initialisation (He for convs, identity affine for norms)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def _init_segnet(model: nn.Module) -> None:
    """MTAN's initialisation (Xavier-normal weights, zero biases)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def _check_split(name: str, split_index: int, max_split: int) -> int:
    is_int = isinstance(split_index, int) and not isinstance(split_index, bool)
    if not is_int or not 1 <= split_index <= max_split:
        raise ConfigError(
            f"model.split_index={split_index!r} is invalid for encoder {name!r}: "
            f"expected an integer in 1..{max_split}"
        )
    return split_index


def _check_hw(input_hw: Sequence[int]) -> tuple[int, int]:
    ok = isinstance(input_hw, (tuple, list)) and len(input_hw) == 2
    if not ok or not all(isinstance(v, int) and v > 0 for v in input_hw):
        raise ConfigError(f"input_hw={input_hw!r} is invalid: expected (height, width) > 0")
    return int(input_hw[0]), int(input_hw[1])


class SplitNetwork:
    """A backbone cut in two: ``encoder`` for the producer, heads for consumers.

    Subclasses build the encoder and the two kinds of heads; this class checks
    the arguments and dispatches on the task kind.

    Attributes:
        name: registry name of the encoder.
        split_index: where the backbone is cut (its meaning depends on the family).
        norm: ``group`` or ``batch``; heads use the same norm as the encoder.
        in_channels: image channels.
        encoder: the producer-side ``nn.Module`` (N×C×H×W → N×C'×H'×W').
    """

    max_split = 0

    def __init__(self, name: str, *, split_index: int, norm: str, in_channels: int) -> None:
        check_norm(norm)
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ConfigError(f"in_channels={in_channels!r} is invalid: expected an integer >= 1")
        self.name = name
        self.split_index = _check_split(name, split_index, self.max_split)
        self.norm = norm
        self.in_channels = in_channels
        self.encoder: nn.Module = self._build_encoder()

    def make_head(
        self, spec: LabelSpec, input_hw: tuple[int, int], *, code_size: int | None = None
    ) -> nn.Module:
        """A fresh consumer head for ``spec`` on images of size ``input_hw``.

        Classification kinds give N×``spec.num_outputs`` logits; dense kinds
        give N×``spec.num_outputs``×H×W at the full input resolution. With
        ``code_size`` (the release is a pooled code, ``defence.code_size``) a
        classification head is a :func:`~metamorphosis.models.heads.code_head`.
        """
        hw = _check_hw(input_hw)
        if spec.is_dense:
            return self._dense_head(spec, hw)
        if code_size is not None:
            channels = self.feature_shape((self.in_channels, *hw))[0]
            return code_head(channels, code_size, spec.num_outputs)
        return self._classification_head(spec, hw)

    def feature_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """C'×H'×W' of the encoder output for one C×H×W input (a dry forward).

        Runs in eval mode under ``no_grad`` on the encoder's own device, so it
        never updates BatchNorm statistics or records autograd state.
        """
        c, h, w = (int(v) for v in input_shape)
        param = next(self.encoder.parameters(), None)
        device = param.device if param is not None else None
        dtype = param.dtype if param is not None else None
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                out = self.encoder(torch.zeros(1, c, h, w, device=device, dtype=dtype))
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"input shape {(c, h, w)} does not fit encoder {self.name!r} at "
                f"model.split_index={self.split_index}: {exc}"
            ) from exc
        finally:
            self.encoder.train(was_training)
        return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split_index={self.split_index}, "
            f"norm={self.norm!r}, in_channels={self.in_channels})"
        )

    def _build_encoder(self) -> nn.Module:
        raise NotImplementedError

    def _classification_head(self, spec: LabelSpec, input_hw: tuple[int, int]) -> nn.Module:
        raise NotImplementedError

    def _dense_head(self, spec: LabelSpec, input_hw: tuple[int, int]) -> nn.Module:
        raise NotImplementedError


class ResNetSplit(SplitNetwork):
    """ResNet cut after its first ``split_index`` top-level children (1..9).

    The classification head is the rest of the ResNet (fresh weights) up to
    ``avgpool`` plus a new ``fc``; the dense head is a small upsampling
    decoder (:func:`~metamorphosis.models.heads.upsampling_decoder`).
    """

    max_split = 9

    def __init__(
        self,
        name: str,
        *,
        split_index: int,
        norm: str,
        in_channels: int,
        width: int,
        blocks: Sequence[int],
    ) -> None:
        self.width = width
        self.blocks = tuple(blocks)
        super().__init__(name, split_index=split_index, norm=norm, in_channels=in_channels)

    def _children(self) -> NamedLayers:
        resnet = ResNet(
            width=self.width, blocks=self.blocks, norm=self.norm, in_channels=self.in_channels
        )
        return list(resnet.named_children())

    def _build_encoder(self) -> nn.Module:
        return nn.Sequential(OrderedDict(self._children()[: self.split_index]))

    def _classification_head(self, spec: LabelSpec, input_hw: tuple[int, int]) -> nn.Module:
        trunk = self._children()[self.split_index : len(RESNET_CHILDREN) - 1]
        return classification_head(trunk, 8 * self.width, spec.num_outputs)

    def _dense_head(self, spec: LabelSpec, input_hw: tuple[int, int]) -> nn.Module:
        channels = self.feature_shape((self.in_channels, *input_hw))[0]
        return upsampling_decoder(channels, 2 * self.width, spec.num_outputs, input_hw, self.norm)


class SegNetSplit(SplitNetwork):
    """MTAN's SegNet cut after ``split_index`` encoder stages (1..5).

    Stage i is ``convs[i]`` conv3x3-norm-ReLU blocks then a 2×2 max-pool, so
    the features are ``channels[k-1]`` × H/2^k × W/2^k. The dense head runs the
    remaining stages, then a mirrored decoder back to ``input_hw`` with
    ``channels[0]`` maps, then MTAN's task layer.

    Deviation from MTAN: its decoder max-unpools with the encoder's pooling
    indices. Those indices would have to cross the network with the features
    (and they leak the input's fine structure), so the decoder upsamples
    bilinearly instead. The classification head is the remaining stages, a
    global average pool and a linear layer.
    """

    max_split = 5

    def __init__(
        self,
        name: str,
        *,
        split_index: int,
        norm: str,
        in_channels: int,
        channels: Sequence[int],
        convs: Sequence[int],
    ) -> None:
        assert len(channels) == len(convs) == self.max_split
        self.channels = tuple(channels)
        self.convs = tuple(convs)
        super().__init__(name, split_index=split_index, norm=norm, in_channels=in_channels)

    def _stage(self, i: int) -> nn.Sequential:
        first = self.in_channels if i == 0 else self.channels[i - 1]
        out = self.channels[i]
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            (f"conv{j + 1}", conv_norm_relu(first if j == 0 else out, out, self.norm))
            for j in range(self.convs[i])
        )
        layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2)
        return nn.Sequential(layers)

    def _stages(self, indices: Iterable[int]) -> NamedLayers:
        return [(f"stage{i + 1}", self._stage(i)) for i in indices]

    def _build_encoder(self) -> nn.Module:
        encoder = nn.Sequential(OrderedDict(self._stages(range(self.split_index))))
        _init_segnet(encoder)
        return encoder

    def _classification_head(self, spec: LabelSpec, input_hw: tuple[int, int]) -> nn.Module:
        trunk = self._stages(range(self.split_index, self.max_split))
        trunk.append(("avgpool", nn.AdaptiveAvgPool2d(1)))
        head = classification_head(trunk, self.channels[-1], spec.num_outputs)
        _init_segnet(head)
        return head

    def _dense_head(self, spec: LabelSpec, input_hw: tuple[int, int]) -> nn.Module:
        sizes = [input_hw]
        for _ in range(self.max_split):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        if min(sizes[-1]) < 1:
            raise ConfigError(
                f"input_hw={input_hw} is too small for encoder {self.name!r}: "
                f"each side must be >= {2**self.max_split}"
            )
        layers = OrderedDict(self._stages(range(self.split_index, self.max_split)))
        for j in range(self.max_split, 0, -1):
            out = self.channels[max(j - 2, 0)]
            layers[f"dec{j}"] = upsample_stage(
                self.channels[j - 1], out, self.convs[j - 1], sizes[j - 1], self.norm
            )
        layers["task"] = task_layer(self.channels[0], spec.num_outputs)
        head = nn.Sequential(layers)
        _init_segnet(head)
        return head


ENCODERS: Registry[SplitNetwork] = Registry("encoder")


@ENCODERS.register("resnet18")
def _resnet18(*, split_index: int, norm: str = "group", in_channels: int = 3) -> SplitNetwork:
    return ResNetSplit(
        "resnet18",
        split_index=split_index,
        norm=norm,
        in_channels=in_channels,
        width=64,
        blocks=(2, 2, 2, 2),
    )


@ENCODERS.register("resnet18-slim")
def _resnet18_slim(*, split_index: int, norm: str = "group", in_channels: int = 3) -> SplitNetwork:
    """ResNet-18 at half width (32…256 channels): a quarter of the compute, for
    small images on a CPU (the demo). Same split indices as ``resnet18``."""
    return ResNetSplit(
        "resnet18-slim",
        split_index=split_index,
        norm=norm,
        in_channels=in_channels,
        width=32,
        blocks=(2, 2, 2, 2),
    )


@ENCODERS.register("test_resnet")
def _test_resnet(*, split_index: int, norm: str = "group", in_channels: int = 3) -> SplitNetwork:
    return ResNetSplit(
        "test_resnet",
        split_index=split_index,
        norm=norm,
        in_channels=in_channels,
        width=8,
        blocks=(1, 1, 1, 1),
    )


@ENCODERS.register("segnet")
def _segnet(*, split_index: int, norm: str = "group", in_channels: int = 3) -> SplitNetwork:
    return SegNetSplit(
        "segnet",
        split_index=split_index,
        norm=norm,
        in_channels=in_channels,
        channels=(64, 128, 256, 512, 512),
        convs=(2, 2, 3, 3, 3),
    )


@ENCODERS.register("test_segnet")
def _test_segnet(*, split_index: int, norm: str = "group", in_channels: int = 3) -> SplitNetwork:
    return SegNetSplit(
        "test_segnet",
        split_index=split_index,
        norm=norm,
        in_channels=in_channels,
        channels=(8, 8, 16, 16, 16),
        convs=(1, 1, 1, 1, 1),
    )


def create_encoder(
    name: str, *, split_index: int, norm: str = "group", in_channels: int = 3
) -> SplitNetwork:
    """Build the split network ``name`` of :data:`ENCODERS` (weights are random).

    Raises:
        ConfigError: unknown name, split index out of range or unknown norm.
    """
    return ENCODERS.create(name, split_index=split_index, norm=norm, in_channels=in_channels)


def list_encoders() -> list[str]:
    """Names accepted by :func:`create_encoder` (``model.encoder``)."""
    return ENCODERS.names()


def load_pretrained(network: SplitNetwork, path: str | os.PathLike[str]) -> None:
    """Load a local torchvision-format state dict into ``network.encoder``.

    Only the encoder's keys are read (``fc`` and anything past the split are
    ignored), but every one of them must be present with the right shape.
    With ``norm="group"`` the BatchNorm affine parameters initialise the
    GroupNorm ones and the running statistics are ignored: a warm start, not
    the pretrained function. The file is read with ``weights_only=True``.

    Raises:
        ConfigError: missing or unreadable file, or keys / shapes that do not
            match the encoder.
    """
    path = Path(path)
    where = f"model.pretrained={str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure here means "not a readable state dict"
        raise ConfigError(f"{where}: cannot read a state dict ({exc})") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigError(f"{where}: expected a state dict, got {type(state).__name__}")
    network.encoder.load_state_dict(_matching_state(network, state, where))


def _matching_state(
    network: SplitNetwork, state: Mapping[str, Any], where: str
) -> dict[str, Tensor]:
    own = network.encoder.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ConfigError(
            f"{where}: lacks {len(missing)} key(s) of encoder {network.name!r}, e.g. {missing[:5]}"
        )
    wrong = [
        k
        for k, v in own.items()
        if not isinstance(state[k], Tensor) or tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ConfigError(
            f"{where}: {len(wrong)} key(s) have the wrong shape for encoder {network.name!r}, "
            f"e.g. {wrong[:5]}"
        )
    return {k: state[k] for k in own}
