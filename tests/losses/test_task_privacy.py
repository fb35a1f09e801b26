"""Task-privacy penalty: ordered pairs, per-sample values, error messages."""

from __future__ import annotations

import itertools

import pytest
import torch

from metamorphosis.errors import ConfigError
from metamorphosis.losses import (
    mean_pairwise_similarity,
    ms_ssim_per_sample,
    ssim_per_sample,
    task_privacy_loss,
)


def _features(n: int = 3, size: int = 8, names=("smile", "gender", "age")) -> dict:
    torch.manual_seed(0)
    base = torch.rand(n, 4, size, size, dtype=torch.float64)
    return {
        name: (base + 0.3 * i * torch.randn_like(base)).requires_grad_()
        for i, name in enumerate(names)
    }


@pytest.mark.parametrize(
    ("similarity", "fn", "size"),
    [("ssim", ssim_per_sample, 8), ("ms-ssim", ms_ssim_per_sample, 24)],
)
def test_equals_omega_times_the_sum_over_ordered_pairs(similarity, fn, size):
    features = _features(size=size)
    loss = task_privacy_loss(features, omega=0.5, similarity=similarity, data_range=2.0)
    expected = sum(
        fn(features[a], features[b], data_range=2.0) for a, b in itertools.permutations(features, 2)
    )
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, 0.5 * expected, rtol=0, atol=1e-12)


def test_each_unordered_pair_counts_twice():
    features = _features(names=("a", "b"))
    loss = task_privacy_loss(features, omega=1.0)
    torch.testing.assert_close(loss, 2 * ssim_per_sample(features["a"], features["b"]))


def test_is_per_sample():
    features = _features()
    loss = task_privacy_loss(features, omega=1.0)
    grads = torch.autograd.grad(loss[2], list(features.values()))
    for grad in grads:
        assert grad[2].abs().sum() > 0
        assert torch.all(grad[:2] == 0)


def test_fewer_than_two_features_give_zeros():
    single = {"smile": torch.rand(5, 2, 4, 4)}
    torch.testing.assert_close(task_privacy_loss(single, omega=1.0), torch.zeros(5))
    assert mean_pairwise_similarity(single) == {}
    with pytest.raises(ValueError, match="empty"):
        task_privacy_loss({}, omega=1.0)


def test_mismatched_shapes_name_both_tasks():
    features = {"smile": torch.rand(2, 4, 8, 8), "gender": torch.rand(2, 4, 8, 7)}
    with pytest.raises(ConfigError, match="smile") as info:
        task_privacy_loss(features, omega=1.0)
    message = str(info.value)
    assert "gender" in message and "(2, 4, 8, 8)" in message and "(2, 4, 8, 7)" in message
    with pytest.raises(ConfigError, match="gender"):
        mean_pairwise_similarity(features)


def test_bad_similarity_and_omega():
    features = _features()
    with pytest.raises(ConfigError, match="ssim, ms-ssim"):
        task_privacy_loss(features, omega=1.0, similarity="cosine")
    with pytest.raises(ConfigError, match="omega"):
        task_privacy_loss(features, omega=-1.0)


def test_mean_pairwise_similarity_reports_unordered_pairs():
    features = _features()
    report = mean_pairwise_similarity(features)
    assert list(report) == [("smile", "gender"), ("smile", "age"), ("gender", "age")]
    for (a, b), value in report.items():
        expected = ssim_per_sample(features[a], features[b]).mean().item()
        assert value == pytest.approx(expected, abs=1e-12)
    same = mean_pairwise_similarity({"a": features["smile"], "b": features["smile"]})
    assert same[("a", "b")] == pytest.approx(1.0)


def test_omega_zero_is_zero_and_still_differentiable():
    features = _features()
    loss = task_privacy_loss(features, omega=0.0)
    torch.testing.assert_close(loss, torch.zeros(3, dtype=torch.float64))
    loss.sum().backward()
    assert all(f.grad is not None for f in features.values())


@pytest.mark.parametrize(("window", "size"), [("gaussian", 16), ("uniform", 6), ("gaussian", 2)])
def test_pairwise_ssim_shares_moments_but_equals_ssim_per_pair(window, size):
    """Values and gradients of the shared-moment path equal pair-by-pair SSIM."""
    from metamorphosis.losses.ssim import pairwise_ssim_per_sample

    maps = list(_features(n=3, size=size, names=("a", "b", "c", "d")).values())
    pairs = list(itertools.combinations(range(4), 2))
    shared = pairwise_ssim_per_sample(maps, pairs, data_range=2.0, window=window)
    alone = torch.stack(
        [ssim_per_sample(maps[i], maps[j], data_range=2.0, window=window) for i, j in pairs]
    )
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-12)
    got = torch.autograd.grad(shared.sum(), maps)
    want = torch.autograd.grad(alone.sum(), maps)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_pairwise_ssim_refuses_mismatched_maps_and_no_pairs():
    from metamorphosis.losses.ssim import pairwise_ssim_per_sample

    with pytest.raises(ValueError, match="same shape"):
        pairwise_ssim_per_sample([torch.rand(2, 1, 4, 4), torch.rand(2, 1, 5, 4)], [(0, 1)])
    with pytest.raises(ValueError, match="at least one"):
        pairwise_ssim_per_sample([torch.rand(2, 1, 4, 4)], [])
