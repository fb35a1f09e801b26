"""Sample distance correlation (Székely, Rizzo & Bakirov, 2007), differentiable.

``dCor(X, Y)`` is 0 exactly when (in the population) X and Y are independent
and 1 when Y is a similarity transform of X (``a·X·R + b``, R orthogonal); it
sees nonlinear dependence that a Pearson correlation misses. NoPeek
(``method: nopeek``) minimises it between the raw input and the released
features.

Unlike every other loss in this package it is *not* per sample: it is one
value for the whole batch, and every sample's contribution depends on every
other sample through the double-centred distance matrices. A method using it
cannot be trained under DP-SGD (see ``Method.per_sample``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["distance_correlation"]

#: Added to every squared distance before the square root: at a zero distance
#: (the diagonal, or two identical samples) the root's gradient would be infinite.
DISTANCE_EPS = 1e-9
#: Floor of dVar²(x)·dVar²(y), clamped before its root (whose gradient is infinite at
#: 0): a batch of identical samples has none, and its dCor is 0 by definition, not 0 / 0.
VARIANCE_FLOOR = 1e-12
#: Added under the final root so that its gradient stays finite at dCor = 0.
ROOT_EPS = 1e-12


def _flat(batch: Tensor, name: str) -> Tensor:
    if batch.ndim == 0:
        raise ValueError(f"distance_correlation: {name} must have a batch dimension, got a scalar")
    return batch.reshape(batch.shape[0], -1)


def _centred_distances(batch: Tensor) -> Tensor:
    """The double-centred Euclidean distance matrix of an N×D batch."""
    batch = batch - batch.mean(dim=0, keepdim=True)  # same distances, less cancellation
    norms = batch.pow(2).sum(dim=1)
    squared = norms[:, None] + norms[None, :] - 2.0 * batch @ batch.T
    distances = torch.sqrt(squared.clamp_min(0.0) + DISTANCE_EPS)
    return (
        distances
        - distances.mean(dim=0, keepdim=True)
        - distances.mean(dim=1, keepdim=True)
        + distances.mean()
    )


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """The sample distance correlation between two batches (a scalar in [0, 1]).

    Args:
        x: N samples, any trailing shape (flattened to N×D).
        y: the same N samples, any trailing shape (flattened to N×D').

    Returns:
        ``sqrt(dCov²(x, y) / sqrt(dCov²(x, x) · dCov²(y, y)))`` with the
        V-statistic ``dCov² = mean(A ∘ B)`` of the double-centred distance
        matrices; differentiable w.r.t. both inputs.

    Raises:
        ValueError: the batches differ in size, or hold fewer than 2 samples.
    """
    x_flat, y_flat = _flat(x, "x"), _flat(y, "y")
    if x_flat.shape[0] != y_flat.shape[0]:
        raise ValueError(
            "distance_correlation needs batches of the same size, "
            f"got {x_flat.shape[0]} and {y_flat.shape[0]} samples"
        )
    if x_flat.shape[0] < 2:
        raise ValueError(f"distance_correlation needs at least 2 samples, got {x_flat.shape[0]}")
    a, b = _centred_distances(x_flat), _centred_distances(y_flat)
    covariance = (a * b).mean()
    variances = (a * a).mean() * (b * b).mean()
    squared = covariance / torch.sqrt(variances.clamp_min(VARIANCE_FLOOR))
    # the V-statistic is >= 0 in exact arithmetic; rounding may dip below near independence
    return torch.sqrt(squared.clamp_min(0.0) + ROOT_EPS)
