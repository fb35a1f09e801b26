"""``method: nopeek`` (Vepakomma et al., "NoPeek: Information leakage reduction to
share activations in distributed deep learning", ICDM Workshops 2020).

The split-learning step of the paper's method (consumers answer features with
feature-gradients; the SSIM term between modules when the phase has one) plus
``weight`` × Σ_T dCor(x, g_T): the sample distance correlation between the raw
model input x and each public task's released features g_T (both flattened per
sample). A module per task and phases from ``privacy.mode`` as in
``method: metamorphosis``.

Refused under DP-SGD (``privacy.mode`` ``input`` or ``both``): distance
correlation is a statistic of the whole batch, so sample ``i``'s gradient
depends on every other sample and the per-sample clipping would not bound it.
It therefore trains with ``privacy.mode`` ``none`` or ``task``.

dCor is a penalty on statistical dependence, not a guarantee: a small value on
training batches bounds no attacker. What the released features leak is what
the audit's best attacker recovers from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import check_positive
from ...losses.distance_correlation import distance_correlation
from ..split import ExtraTerms
from .base import PhasePlan, StepInputs
from .metamorphosis import MetaMorphosis
from .registry import METHODS

__all__ = ["NoPeek", "NoPeekOptions"]


@dataclass(frozen=True)
class NoPeekOptions:
    """The ``nopeek:`` section: ``weight`` of the distance-correlation term."""

    weight: float = 0.1

    def __post_init__(self) -> None:
        check_positive("nopeek.weight", self.weight, allow_zero=True)


@METHODS.register("nopeek")
class NoPeek(MetaMorphosis):
    """The split-learning step plus ``weight`` × dCor(input, features) per public task."""

    name = "nopeek"
    Options = NoPeekOptions
    per_sample = False
    not_per_sample_because = (
        "its distance-correlation term is a statistic of the whole batch, so one "
        "sample's gradient depends on every other sample"
    )

    def check(self) -> None:
        # refused when the config is resolved, before any data is read
        self.check_dp(self.phases())

    def extra_terms(self, phase: PhasePlan, inputs: StepInputs) -> ExtraTerms:
        """``nopeek_term``: the weighted dCor of the input with each public task's features."""
        names = list(phase.labels)

        def nopeek(features: Mapping[str, Tensor]) -> dict[str, Tensor]:
            term = self._nopeek_term(inputs.images, features, names)
            return {} if term is None else {"nopeek_term": term}

        return nopeek

    def _nopeek_term(
        self, images: Tensor, features: Mapping[str, Tensor], names: Sequence[str]
    ) -> Tensor | None:
        """``weight`` × Σ_T dCor(x, g_T) over the phase's public tasks T.

        Private attributes' features are never released, so they are not penalised.
        """
        public = {spec.name for spec in self.config.tasks}
        released = [features[n] for n in names if n in public]
        if not released:
            return None
        total = torch.stack([distance_correlation(images, g) for g in released]).sum()
        return self.options.weight * total
