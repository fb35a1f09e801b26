"""Task-privacy penalty: SSIM de-correlation between the tasks' features.

MetaMorphosis makes the features published for task i useless for task j by
adding ``omega * sum_{i != j} SSIM(g_i, g_j)`` to the producer objective, where
``g_i`` is the output of task i's metamorphosis module (private attributes
included). The sum runs over *ordered* pairs, as written in the paper, so each
unordered pair counts twice; SSIM is symmetric, so it is computed once per
unordered pair and doubled.

The penalty is per sample (shape (N,)) like every other loss in the package,
so the DP-SGD per-sample clipping stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations

import torch
from torch import Tensor

from ..errors import ConfigError
from .ssim import ms_ssim_per_sample, pairwise_ssim_per_sample, ssim_per_sample

__all__ = ["SIMILARITIES", "mean_pairwise_similarity", "task_privacy_loss"]

_SIMILARITY_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "ssim": ssim_per_sample,
    "ms-ssim": ms_ssim_per_sample,
}
#: Names accepted by ``similarity=`` (the values of ``privacy.similarity``).
SIMILARITIES = tuple(_SIMILARITY_FUNCTIONS)


def _similarity(name: str) -> Callable[..., Tensor]:
    try:
        return _SIMILARITY_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"similarity={name!r} is invalid: expected one of {', '.join(SIMILARITIES)}"
        ) from None


def _checked_features(features: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    """Items of ``features`` after checking that every map has the same N×C×H×W."""
    items = list(features.items())
    if not items:
        raise ValueError("features is empty: pass at least one task's feature map")
    first_name, first = items[0]
    for name, value in items:
        if not isinstance(value, Tensor) or value.dim() != 4:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(f"features[{name!r}] must be an N×C×H×W tensor, got {shape}")
        if value.shape != first.shape:
            raise ConfigError(
                f"task features must share one shape to be compared: {first_name!r} has "
                f"{tuple(first.shape)} but {name!r} has {tuple(value.shape)}"
            )
    return items


def _pair_similarities(
    items: list[tuple[str, Tensor]], similarity: str, data_range: float
) -> tuple[list[tuple[str, str]], Tensor]:
    """Similarity of every unordered pair, as a P×N tensor (one batched call)."""
    fn = _similarity(similarity)
    pairs = list(combinations(range(len(items)), 2))
    names = [(items[i][0], items[j][0]) for i, j in pairs]
    n = items[0][1].shape[0]
    # Samples stay independent: the similarity is computed per (pair, sample) row.
    if similarity == "ssim":  # each map's moments once, however many pairs it is in
        maps = [value for _, value in items]
        return names, pairwise_ssim_per_sample(maps, pairs, data_range=data_range)
    left = torch.cat([items[i][1] for i, _ in pairs])
    right = torch.cat([items[j][1] for _, j in pairs])
    values = fn(left, right, data_range=data_range).view(len(pairs), n)
    return names, values


def task_privacy_loss(
    features: Mapping[str, Tensor],
    *,
    omega: float,
    similarity: str = "ssim",
    data_range: float = 1.0,
) -> Tensor:
    """Per-sample de-correlation penalty ``omega * sum_{i != j} sim(g_i, g_j)``.

    Args:
        features: task (or private attribute) name → its module's N×C×H×W
            features; all maps must have the same shape.
        omega: weight of the penalty (``privacy.omega``), >= 0.
        similarity: ``"ssim"`` or ``"ms-ssim"`` (``privacy.similarity``).
        data_range: dynamic range passed to the similarity
            (``privacy.ssim_data_range``).

    Returns:
        Tensor of shape (N,), differentiable; zeros when fewer than two
        feature maps are given.

    Raises:
        ConfigError: unknown ``similarity``, negative ``omega``, or feature
            maps whose shapes differ (the message names both tasks).
        ValueError: ``features`` is empty (the batch size is then unknown).
    """
    if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not omega >= 0:
        raise ConfigError(f"omega={omega!r} is invalid: expected a number >= 0")
    _similarity(similarity)
    items = _checked_features(features)
    first = items[0][1]
    if len(items) < 2:
        return first.new_zeros(first.shape[0])
    _, values = _pair_similarities(items, similarity, data_range)
    return omega * 2.0 * values.sum(dim=0)


def mean_pairwise_similarity(
    features: Mapping[str, Tensor],
    *,
    similarity: str = "ssim",
    data_range: float = 1.0,
) -> dict[tuple[str, str], float]:
    """Batch-mean similarity of every unordered pair of task features, for reports.

    Args:
        features: as in :func:`task_privacy_loss`.
        similarity: ``"ssim"`` or ``"ms-ssim"``.
        data_range: dynamic range passed to the similarity.

    Returns:
        ``{(a, b): mean over the batch of sim(g_a, g_b)}`` for every pair with
        ``a`` before ``b`` in the mapping's order; empty for fewer than two maps.
    """
    items = _checked_features(features)
    _similarity(similarity)
    if len(items) < 2:
        return {}
    with torch.no_grad():
        names, values = _pair_similarities(items, similarity, data_range)
        means = values.mean(dim=1).tolist()
    return dict(zip(names, means, strict=True))
