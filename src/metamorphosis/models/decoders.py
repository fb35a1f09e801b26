"""Decoders from a feature map back to an image.

The reconstruction attacker of the audit and the adversary decoder of the
DeepObfuscator baseline share this architecture, so the baseline trains
against the same kind of attacker the audit later runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["ReconstructionDecoder"]

_MIN_CHANNELS = 32  # decoder stages halve their width down to this floor


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 that divides ``channels`` (GroupNorm needs a divisor)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3×3 → GroupNorm → ReLU; GroupNorm (not BatchNorm) keeps items independent."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(_groups(out_channels), out_channels),
        nn.ReLU(),
    )


class ReconstructionDecoder(nn.Module):
    """A convolutional decoder from a feature map to an RGB image in [0, 1].

    It is the attacker, so it is meant to be strong enough to invert any
    (near-)lossless mapping well: a stem block at the feature resolution,
    then stages that each upsample bilinearly by at most 2 (capped at
    ``out_hw``, so sizes that are not powers of two apart end in one exact
    final upsample) followed by a conv block, then one refinement block at the
    output resolution and a 3×3 convolution to RGB with a sigmoid. Widths
    start at ``width`` and halve per block, not under 32.

    Args:
        in_channels: channels of the feature map.
        in_hw: (height, width) of the feature map.
        out_hw: (height, width) of the images to reconstruct.
        width: channels of the stem block.
    """

    def __init__(
        self,
        in_channels: int,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
        width: int = 128,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"decoder {name}={value!r} is invalid: expected an integer >= 1")
        for name, hw in (("in_hw", in_hw), ("out_hw", out_hw)):
            if len(hw) != 2 or any(not isinstance(s, int) or s < 1 for s in hw):
                raise ConfigError(f"decoder {name}={hw!r} is invalid: expected two integers >= 1")
        self.in_hw = (int(in_hw[0]), int(in_hw[1]))
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        floor = min(_MIN_CHANNELS, width)

        self.stem = _conv_block(in_channels, width)
        channels = width
        sizes: list[tuple[int, int]] = []
        blocks: list[nn.Module] = []
        height, wide = self.in_hw
        while (height, wide) != self.out_hw:
            # ×2, capped: sizes that are not powers of two apart end on out_hw exactly; a
            # feature map larger than the image is resized straight to out_hw.
            height, wide = min(2 * height, self.out_hw[0]), min(2 * wide, self.out_hw[1])
            nxt = max(floor, channels // 2)
            sizes.append((height, wide))
            blocks.append(_conv_block(channels, nxt))
            channels = nxt
        self.stage_sizes = sizes
        self.stages = nn.ModuleList(blocks)
        refined = max(floor, channels // 2)
        self.refine = _conv_block(channels, refined)
        self.head = nn.Conv2d(refined, 3, kernel_size=3, padding=1)

    def forward(self, features: Tensor) -> Tensor:
        """N×C×h×w features -> N×3×H×W images in [0, 1]."""
        if tuple(features.shape[-2:]) != self.in_hw:
            raise ConfigError(
                f"decoder expects {self.in_hw[0]}x{self.in_hw[1]} feature maps, "
                f"got {tuple(features.shape[-2:])}"
            )
        x = self.stem(features)
        for size, block in zip(self.stage_sizes, self.stages, strict=True):
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(self.head(self.refine(x)))
