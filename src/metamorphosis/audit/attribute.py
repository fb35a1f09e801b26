"""The reference points every leakage figure is read against.

* the **majority rate**: what an attacker learns from nothing (answer the
  train split's most frequent class);
* the **label floor**: what the source task's true labels alone reveal about
  another label. No feature that serves the task perfectly can leak less;
  a leak at the floor is the task's, not the features'.

The attackers themselves are in :mod:`metamorphosis.audit.attacks`; the
third reference point, the best attacker on the universal features, is
measured by :mod:`metamorphosis.audit.attacks.leakage`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import LabelSpec

__all__ = ["label_floor", "majority_rate"]


def majority_rate(spec: LabelSpec, train_targets: Tensor, test_targets: Tensor) -> float | None:
    """Test accuracy of always answering the train split's most frequent class."""
    if spec.is_dense:
        return None
    classes, counts = torch.unique(train_targets.long(), return_counts=True)
    majority = classes[counts.argmax()]
    return float((test_targets.long() == majority).float().mean())


def label_floor(public_targets: Tensor, private_targets: Tensor) -> float | None:
    """Accuracy of the best guess of a private attribute from a public task's true labels.

    Within each public-label cell the guess is the cell's most frequent private
    class, counted on the very items it is scored on: no predictor that sees only
    the public label does better. Features that serve the public task perfectly
    carry its label, so no defence can push leakage below this; a leak at the
    floor is the task's, not the features'. None unless both are class labels
    (one value per item).
    """
    if public_targets.dim() != 1 or private_targets.dim() != 1 or not len(public_targets):
        return None
    public, private = public_targets.long(), private_targets.long()
    hits = sum(
        int(torch.unique(private[public == cell], return_counts=True)[1].max())
        for cell in torch.unique(public)
    )
    return hits / len(public)
