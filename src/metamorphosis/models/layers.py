"""Small building blocks shared by encoders, heads and metamorphosis modules.

The one rule they enforce: with ``norm="group"`` nothing normalises across
the batch, so every layer is sample-independent (Opacus computes per-sample
gradients and a consumer head cannot leak one sample into another).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..config import NORMS
from ..errors import ConfigError

__all__ = ["NORMS", "check_norm", "group_count", "norm_layer", "conv_norm_relu"]

_GROUP_CHOICES = (32, 16, 8, 4, 2, 1)


def check_norm(norm: str) -> None:
    """Reject a norm name other than those of :data:`NORMS`."""
    if norm not in NORMS:
        raise ConfigError(f"model.norm={norm!r} is invalid: expected one of {', '.join(NORMS)}")


def group_count(channels: int) -> int:
    """GroupNorm groups for ``channels``: the largest of 32, 16, …, 1 that divides
    it and leaves at least two channels per group (one group when ``channels`` is 1).

    Equals torchvision/Opacus' ``min(32, C)`` for every width of ResNet-18 and
    SegNet (C >= 64). For the tiny test networks, two channels per group keep a
    1×1 map (a ResNet split after ``avgpool``) normalisable: a single value per
    group would be normalised to zero (and GroupNorm refuses it).
    """
    return next(g for g in _GROUP_CHOICES if channels % g == 0 and (channels // g >= 2 or g == 1))


def norm_layer(norm: str, channels: int) -> nn.Module:
    """``GroupNorm`` (sample-independent, Opacus-safe) or ``BatchNorm2d``."""
    check_norm(norm)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return nn.BatchNorm2d(channels)


def conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3×3 conv (padding 1) → norm → ReLU, the SegNet / decoder unit.

    The ReLU is not in place: in-place activations break Opacus' hooks.
    """
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            norm=norm_layer(norm, out_channels),
            relu=nn.ReLU(),
        )
    )
