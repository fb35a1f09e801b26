"""Consumer-side head builders shared by every split encoder.

A head turns one task's published features into that task's outputs. Heads
return raw outputs and leave the link function to the loss / metric:
classification and segmentation give logits, depth an unconstrained map and
normals an unnormalised 3-vector per pixel (the cosine loss and the angle
metric normalise). Heads only contain sample-independent layers when the
norm is ``group``: a head that mixed samples in training (BatchNorm) would
silently break the per-sample guarantee of DP training on the producer side.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from torch import nn

from .layers import conv_norm_relu

__all__ = [
    "CODE_HEAD_HIDDEN",
    "classification_head",
    "code_head",
    "upsampling_decoder",
    "upsample_stage",
    "task_layer",
]

CODE_HEAD_HIDDEN = 256  # hidden width of a code head (the slim ResNet's pooled width)


def classification_head(
    trunk: Iterable[tuple[str, nn.Module]], in_features: int, num_outputs: int
) -> nn.Sequential:
    """``trunk`` (ending in a global pool) → flatten → a fresh linear layer ``fc``.

    Args:
        trunk: named layers from the split point up to and including the
            global pool; their names are kept so the head's state dict reads
            like the unsplit network's (``layer4.0.conv1.weight``).
        in_features: channels leaving the global pool.
        num_outputs: logits (1 for binary).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(trunk)
    layers["flatten"] = nn.Flatten(1)
    layers["fc"] = nn.Linear(in_features, num_outputs)
    return nn.Sequential(layers)


def code_head(channels: int, code_size: int, num_outputs: int) -> nn.Sequential:
    """A small MLP on a pooled release: average the map back to ``code_size`` ×
    ``code_size`` (exactly the expanded code where the map's side is a multiple of
    it), flatten, two hidden layers of :data:`CODE_HEAD_HIDDEN`, a linear ``fc``.

    Why not the ResNet's remaining layers: fed a map that is constant within each
    region, their GroupNorm normalises two nearly equal channels per group, which
    leaves little more than a sign, the same for every image while the code is
    young. On CelebA smile through a one-vector code (quick budget, 10 epochs) that
    trunk never left the constant prediction (51 %); this head reaches 88 %
    (``python benchmarks/frontier.py celeba --point vib-censor_weight_0``).
    """
    return nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(code_size),
            flatten=nn.Flatten(1),
            fc1=nn.Linear(channels * code_size * code_size, CODE_HEAD_HIDDEN),
            relu1=nn.ReLU(),
            fc2=nn.Linear(CODE_HEAD_HIDDEN, CODE_HEAD_HIDDEN),
            relu2=nn.ReLU(),
            fc=nn.Linear(CODE_HEAD_HIDDEN, num_outputs),
        )
    )


def upsampling_decoder(
    in_channels: int,
    hidden: int,
    num_outputs: int,
    output_hw: tuple[int, int],
    norm: str,
) -> nn.Sequential:
    """Two conv-norm-ReLU blocks, a bilinear upsample to ``output_hw``, a 1×1 conv.

    Deliberately small: a dense head on a classification backbone should
    mostly measure what the published features carry, not add capacity.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=conv_norm_relu(in_channels, hidden, norm),
            conv2=conv_norm_relu(hidden, hidden, norm),
            upsample=nn.Upsample(size=tuple(output_hw), mode="bilinear", align_corners=False),
            out=nn.Conv2d(hidden, num_outputs, kernel_size=1),
        )
    )


def upsample_stage(
    in_channels: int, out_channels: int, num_convs: int, size: tuple[int, int], norm: str
) -> nn.Sequential:
    """One SegNet decoder stage: bilinear upsample to ``size``, then conv-norm-ReLU blocks.

    Upsampling to an explicit size (the size the mirrored encoder stage saw)
    keeps odd input sides exact, where a fixed ×2 would drift by a pixel.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        upsample=nn.Upsample(size=tuple(size), mode="bilinear", align_corners=False)
    )
    for j in range(num_convs):
        layers[f"conv{j + 1}"] = conv_norm_relu(
            in_channels if j == 0 else out_channels, out_channels, norm
        )
    return nn.Sequential(layers)


def task_layer(channels: int, num_outputs: int) -> nn.Sequential:
    """MTAN's prediction layer: 3×3 conv (C→C) then 1×1 conv (C→outputs), no activation."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            out=nn.Conv2d(channels, num_outputs, kernel_size=1),
        )
    )
