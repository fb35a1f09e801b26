"""Attribute inference: can a consumer recover the producer's private attributes?

For each public task's features and each private attribute (gender, identity,
driver id …) two fresh attackers are trained on the train split and scored
on the test split:

* a **head attacker** of the consumer-head architecture (the retrained swap
  cell ``[task][attribute]``, shared with :mod:`.swap` rather than retrained);
* a **linear probe** on the standardised, flattened features: weak, but it
  shows how *directly* the attribute is written in the features.

Each is set beside three reference points: the majority-class rate (what an
attacker learns from nothing), the **label floor** (what the public task's
true labels alone reveal: no feature that serves the task perfectly can leak
less) and the same attackers on the universal features (the shared encoder
output, what a producer without metamorphosis modules would publish).
Leakage is bad when it approaches the universal rate and unavoidable up to
the label floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import LabelSpec
from .budget import AttackBudget
from .features import ENCODER_SOURCE, FeatureSet
from .fitting import fit, predict
from .swap import SwapResult, label_loss, score

__all__ = [
    "ASSUMPTION",
    "AttributeRow",
    "attribute_inference",
    "label_floor",
    "linear_probe",
    "majority_rate",
]

ASSUMPTION = (
    "The attacker is a consumer of one public task: it holds that task's features for the "
    "train split together with the private attribute's labels (e.g. from public profiles), "
    "trains a fresh classifier, and is scored on held-out test images."
)


@dataclass
class AttributeRow:
    """Leakage of one private attribute through one feature source.

    Attributes:
        source: the public task whose features are attacked (or ``encoder``).
        attribute: the private attribute.
        metric: the attribute's primary metric name.
        head: the head attacker's score.
        probe: the linear probe's score.
        majority: the majority-class rate on the test split (None for dense kinds).
        universal_head: the head attacker's score on the encoder output.
        universal_probe: the linear probe's score on the encoder output.
        label_floor: the attribute's accuracy from the source task's true test labels
            (:func:`label_floor`; None for the encoder and for dense labels).
    """

    source: str
    attribute: str
    metric: str
    head: float
    probe: float
    majority: float | None
    universal_head: float
    universal_probe: float
    label_floor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def _floor_of(test: FeatureSet, source: str, attribute: str) -> float | None:
    """The label floor of ``attribute`` through a source that is a labelled task (not the
    encoder output, nor a feature source without labels)."""
    if source == ENCODER_SOURCE or source not in test.targets:
        return None
    return label_floor(test.targets[source], test.targets[attribute])


class _Standardise(nn.Module):
    """Fixed per-feature standardisation learned from the train split."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _probe_model(spec: LabelSpec, train_features: Tensor, output_hw: tuple[int, int]) -> nn.Module:
    mean = train_features.mean(dim=0, keepdim=True)[0]
    std = train_features.std(dim=0, keepdim=True)[0].clamp_min(1e-6)
    if spec.is_dense:  # per-location linear map, upsampled to the label's resolution
        return nn.Sequential(
            _Standardise(mean, std),
            nn.Conv2d(train_features.shape[1], spec.num_outputs, kernel_size=1),
            nn.Upsample(size=output_hw, mode="bilinear", align_corners=False),
        )
    return nn.Sequential(
        _Standardise(mean, std),
        nn.Flatten(1),
        nn.Linear(train_features[0].numel(), spec.num_outputs),
    )


def linear_probe(
    spec: LabelSpec,
    source: str,
    train: FeatureSet,
    test: FeatureSet,
    *,
    budget: AttackBudget,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Every metric of a linear probe for ``spec`` trained on ``source``'s features."""
    output_hw = (int(train.images.shape[-2]), int(train.images.shape[-1]))
    torch.manual_seed(seed)
    model = _probe_model(spec, train.sources[source], output_hw)
    fit(
        model,
        train.sources[source],
        train.targets[spec.name],
        label_loss(spec),
        budget=budget,
        epochs=budget.epochs,
        seed=seed,
        device=device,
        description=f"probe {spec.name} from {source}",
    )
    return score(spec, predict(model, test.sources[source], device=device), test.targets[spec.name])


def attribute_inference(
    retrained: SwapResult,
    tasks: Sequence[str],
    private: Sequence[LabelSpec],
    train: FeatureSet,
    test: FeatureSet,
    *,
    budget: AttackBudget,
    seed: int,
    device: torch.device | str = "cpu",
) -> list[AttributeRow]:
    """One row per (public task, private attribute), plus the universal baseline rows.

    ``retrained`` must hold the cells ``[source][attribute]`` for every task
    and for ``encoder``: the head attacker is not trained twice.
    """
    rows = []
    for attr_index, spec in enumerate(private):
        metric = retrained.metric[spec.name][0]
        probes = {
            source: linear_probe(
                spec,
                source,
                train,
                test,
                budget=budget,
                seed=seed + 97 * attr_index + i,
                device=device,
            )[metric]
            for i, source in enumerate([ENCODER_SOURCE, *tasks])
        }
        majority = majority_rate(spec, train.targets[spec.name], test.targets[spec.name])
        for source in [*tasks, ENCODER_SOURCE]:
            rows.append(
                AttributeRow(
                    source=source,
                    attribute=spec.name,
                    metric=metric,
                    head=retrained.matrix[source][spec.name],
                    probe=probes[source],
                    majority=majority,
                    universal_head=retrained.matrix[ENCODER_SOURCE][spec.name],
                    universal_probe=probes[ENCODER_SOURCE],
                    label_floor=_floor_of(test, source, spec.name),
                )
            )
    return rows
