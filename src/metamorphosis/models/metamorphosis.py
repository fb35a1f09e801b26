"""Per-task metamorphosis modules: shared features E(x) → task-specific features.

The producer keeps one module per public task and per private attribute and
publishes only the public ones' outputs. Every module maps N×C×H×W to
N×C×H×W, so a consumer head sees the encoder's feature shape whatever the
module. All layers are per-sample (convs, linears, pooling over one sample's
map; no BatchNorm, nothing in place) so Opacus can compute per-sample
gradients through them.

Entries of :data:`MODULES`:

* ``cross-sec`` — Cross-SEC (MetaMorphosis, IoTDI 2023, Fig. 3). E(x) is split
  along channels into k groups; each group goes through a 1×1 conv and a
  squeeze-and-excitation branch (global average pool, Linear, ReLU, Linear,
  Sigmoid) giving a channel attention a_g. The attentions are *swapped*:
  group g is rescaled by a_{(g+1) mod k} (for k = 2 the two groups trade
  attentions), so each group's gating is driven by another group's content,
  which is what lets de-correlation training separate the tasks. The groups
  are concatenated and mixed by a 1×1 conv. As in SE, the attention rescales
  the transformed group (the 1×1 conv output), not the raw input. With k = 1
  the swap is the identity and the module degenerates to plain SE (between
  two 1×1 convs).
* ``sec`` — the same without the swap (group g rescaled by its own a_g), the
  paper's ablation.
* ``identity`` — no change and no parameters: universal features (privacy
  mode ``none``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["MODULES", "CrossSEC", "create_module", "list_modules"]


def _check_int(key: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is invalid: expected an integer >= {minimum}")


def _squeeze_excite(channels: int, hidden: int) -> nn.Sequential:
    """SE branch: N×C×H×W → N×C gates in (0, 1)."""
    return nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            fc1=nn.Linear(channels, hidden),
            relu=nn.ReLU(),
            fc2=nn.Linear(hidden, channels),
            gate=nn.Sigmoid(),
        )
    )


class CrossSEC(nn.Module):
    """Grouped squeeze-and-excitation with optionally swapped attentions.

    Args:
        channels: C of the encoder features.
        groups: k, the number of channel groups; must divide ``channels``.
        reduction: squeeze ratio; the SE bottleneck has
            ``max(1, (C / k) // reduction)`` units.
        swap: ``True`` for Cross-SEC (group g gated by a_{(g+1) mod k}),
            ``False`` for SEC (group g gated by its own a_g).

    Raises:
        ConfigError: a non-positive argument or ``groups`` not dividing ``channels``.
    """

    def __init__(self, channels: int, *, groups: int = 2, reduction: int = 4, swap: bool = True):
        super().__init__()
        _check_int("channels", channels, 1)
        _check_int("model.groups", groups, 1)
        _check_int("model.reduction", reduction, 1)
        if channels % groups:
            raise ConfigError(
                f"model.groups={groups} is invalid: it must divide the {channels} feature "
                "channels of the encoder"
            )
        width = channels // groups
        hidden = max(1, width // reduction)
        self.groups = groups
        self.swap = swap
        self.branches = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(groups))
        self.excite = nn.ModuleList(_squeeze_excite(width, hidden) for _ in range(groups))
        self.fuse = nn.Conv2d(channels, channels, 1)
        shift = 1 if swap else 0
        self.sources = tuple((g + shift) % groups for g in range(groups))

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.chunk(x, self.groups, dim=1)
        feats = [conv(part) for conv, part in zip(self.branches, parts, strict=True)]
        gates = [excite(feat) for excite, feat in zip(self.excite, feats, strict=True)]
        scaled = [
            feat * gates[src][:, :, None, None]
            for feat, src in zip(feats, self.sources, strict=True)
        ]
        return self.fuse(torch.cat(scaled, dim=1))

    def extra_repr(self) -> str:
        return f"groups={self.groups}, swap={self.swap}"


MODULES: Registry[nn.Module] = Registry("module")


@MODULES.register("cross-sec")
def _cross_sec(*, channels: int, groups: int, reduction: int) -> nn.Module:
    return CrossSEC(channels, groups=groups, reduction=reduction, swap=True)


@MODULES.register("sec")
def _sec(*, channels: int, groups: int, reduction: int) -> nn.Module:
    return CrossSEC(channels, groups=groups, reduction=reduction, swap=False)


@MODULES.register("identity")
def _identity(*, channels: int, groups: int, reduction: int) -> nn.Module:
    _check_int("channels", channels, 1)
    return nn.Identity()


def create_module(name: str, channels: int, *, groups: int = 2, reduction: int = 4) -> nn.Module:
    """Build the metamorphosis module ``name`` for ``channels``-channel features.

    Raises:
        ConfigError: unknown name (lists the valid ones) or invalid arguments.
    """
    return MODULES.create(name, channels=channels, groups=groups, reduction=reduction)


def list_modules() -> list[str]:
    """Names accepted by :func:`create_module` (``model.module``)."""
    return MODULES.names()
