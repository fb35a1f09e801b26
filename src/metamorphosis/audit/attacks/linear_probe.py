"""The linear probe: how *directly* a label is written in the features.

A linear map of the standardised, flattened features (for dense labels: a
1×1 convolution per location, upsampled to the label's resolution). Weak on
its own, it shows whether a label can be read off without learning a
representation, and it is cheap enough to run everywhere.
"""

from __future__ import annotations

from torch import nn

from .attacker import ATTACKERS, Cell, Standardise, TrainedAttacker

__all__ = ["LinearProbe"]


@ATTACKERS.register("linear_probe")
class LinearProbe(TrainedAttacker):
    """A linear classifier (or per-location linear map) on standardised features."""

    name = "linear_probe"
    assumes = (
        "Linear probe: a linear map of the standardised features (per location for dense "
        "labels), trained like the other attackers; it shows how directly the label is "
        "written in the features."
    )

    def build(self, cell: Cell) -> nn.Module:
        features = cell.fit_inputs
        standardise = Standardise(features)  # per feature value, from the items it trains on
        if cell.spec.is_dense:
            return nn.Sequential(
                standardise,
                nn.Conv2d(features.shape[1], cell.spec.num_outputs, kernel_size=1),
                nn.Upsample(size=cell.output_hw, mode="bilinear", align_corners=False),
            )
        return nn.Sequential(
            standardise,
            nn.Flatten(1),
            nn.Linear(features[0].numel(), cell.spec.num_outputs),
        )
