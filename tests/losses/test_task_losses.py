"""Per-sample task losses against naive numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metamorphosis.errors import ConfigError
from metamorphosis.losses import IGNORE_INDEX, task_loss

FEW = settings(max_examples=25, deadline=None)


def _log_softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _dense_batch(seed: int, n: int, h: int, w: int, channels: int):
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal((n, channels, h, w))


@FEW
@given(n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_binary_matches_numpy(n, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, 1)) * 3
    target = rng.integers(0, 2, n).astype(np.float32)
    z = logits[:, 0]
    ref = np.where(target == 1, np.log1p(np.exp(-z)), np.log1p(np.exp(z)))
    ours = task_loss("binary", torch.from_numpy(logits), torch.from_numpy(target))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)
    flat = task_loss("binary", torch.from_numpy(logits[:, 0]), torch.from_numpy(target))
    torch.testing.assert_close(flat, ours)


@FEW
@given(n=st.integers(1, 6), k=st.integers(2, 7), seed=st.integers(0, 2**16))
def test_multiclass_matches_numpy(n, k, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * 3
    target = rng.integers(0, k, n)
    ref = -_log_softmax(logits, 1)[np.arange(n), target]
    ours = task_loss("multiclass", torch.from_numpy(logits), torch.from_numpy(target))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)


@FEW
@given(
    n=st.integers(1, 4),
    k=st.integers(2, 5),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    void=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_segmentation_matches_naive_loop(n, k, h, w, void, seed):
    rng, logits = _dense_batch(seed, n, h, w, k)
    target = rng.integers(0, k, (n, h, w))
    target[rng.random((n, h, w)) < void] = IGNORE_INDEX
    logp = _log_softmax(logits, 1)
    ref = []
    for i in range(n):
        losses = [-logp[i, target[i, a, b], a, b] for a in range(h) for b in range(w)
                  if target[i, a, b] != IGNORE_INDEX]  # fmt: skip
        ref.append(np.mean(losses) if losses else 0.0)
    ours = task_loss("segmentation", torch.from_numpy(logits), torch.from_numpy(target))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


@FEW
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    invalid=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_depth_matches_naive_loop(n, h, w, invalid, seed):
    rng, pred = _dense_batch(seed, n, h, w, 1)
    target = rng.random((n, 1, h, w)) * 10 + 0.1
    target[rng.random((n, 1, h, w)) < invalid] = 0.0
    ref = []
    for i in range(n):
        valid = target[i] > 0
        ref.append(np.abs(pred[i] - target[i])[valid].mean() if valid.any() else 0.0)
    ours = task_loss("depth", torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


@FEW
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    invalid=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_normals_matches_naive_loop(n, h, w, invalid, seed):
    rng, pred = _dense_batch(seed, n, h, w, 3)
    target = rng.standard_normal((n, 3, h, w))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    target *= (rng.random((n, 1, h, w)) >= invalid).astype(float)
    ref = []
    for i in range(n):
        losses = []
        for a in range(h):
            for b in range(w):
                t = target[i, :, a, b]
                if np.any(t != 0):
                    p = pred[i, :, a, b] / np.linalg.norm(pred[i, :, a, b])
                    losses.append(1.0 - p @ t)
        ref.append(np.mean(losses) if losses else 0.0)
    ours = task_loss("normals", torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_normals_hand_checked():
    target = torch.zeros(2, 3, 1, 2)
    target[:, 2] = 1.0  # both pixels point along z
    pred = torch.zeros(2, 3, 1, 2)
    pred[0, 2] = 5.0  # same direction, not unit length: loss 0
    pred[1, 2, 0, 0] = -2.0  # opposite: 2
    pred[1, 0, 0, 1] = 1.0  # orthogonal: 1
    torch.testing.assert_close(task_loss("normals", pred, target), torch.tensor([0.0, 1.5]))


@pytest.mark.parametrize(
    ("kind", "output_shape", "target_shape", "dtype"),
    [("segmentation", (3, 4, 5, 6), (3, 5, 6), torch.int64),
     ("depth", (3, 1, 5, 6), (3, 1, 5, 6), torch.float64),
     ("normals", (3, 3, 5, 6), (3, 3, 5, 6), torch.float64)],
)  # fmt: skip
def test_dense_losses_are_per_sample(kind, output_shape, target_shape, dtype):
    torch.manual_seed(0)
    output = torch.randn(output_shape, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, target_shape) if dtype == torch.int64 else torch.rand(target_shape)
    target = target.to(dtype)
    loss = task_loss(kind, output, target)
    assert loss.shape == (3,)
    (grad,) = torch.autograd.grad(loss[1], output)
    assert grad[1].abs().sum() > 0
    assert torch.all(grad[[0, 2]] == 0)
    alone = task_loss(kind, output[1:2], target[1:2])
    torch.testing.assert_close(alone, loss[1:2])


def test_samples_without_valid_pixels_get_zero_loss_and_no_gradient():
    output = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    target[1, 0, 0] = 2
    loss = task_loss("segmentation", output, target)
    assert loss[0].item() == 0.0 and loss[1].item() > 0
    loss.sum().backward()
    assert torch.all(output.grad[0] == 0)
    depth = task_loss("depth", torch.randn(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    torch.testing.assert_close(depth, torch.zeros(2))
    normals = task_loss("normals", torch.randn(2, 3, 3, 3), torch.zeros(2, 3, 3, 3))
    torch.testing.assert_close(normals, torch.zeros(2))


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ConfigError, match="binary, multiclass, segmentation, depth, normals"):
        task_loss("regression", torch.zeros(2, 1), torch.zeros(2))


@pytest.mark.parametrize(
    ("kind", "output_shape", "target_shape"),
    [("binary", (4, 2), (4,)), ("binary", (4, 1), (3,)), ("multiclass", (4, 3), (4, 3)),
     ("segmentation", (2, 3, 5, 5), (2, 5, 4)), ("depth", (2, 1, 5, 5), (2, 5, 5)),
     ("normals", (2, 1, 5, 5), (2, 1, 5, 5))],
)  # fmt: skip
def test_shape_mismatch_names_both_shapes(kind, output_shape, target_shape):
    target_dtype = torch.int64 if kind in ("multiclass", "segmentation") else torch.float32
    with pytest.raises(ValueError, match="shape") as info:
        task_loss(kind, torch.zeros(output_shape), torch.zeros(target_shape, dtype=target_dtype))
    assert str(output_shape) in str(info.value) and str(target_shape) in str(info.value)


def test_class_targets_must_be_integers():
    with pytest.raises(ValueError, match="integer"):
        task_loss("multiclass", torch.zeros(2, 3), torch.zeros(2))
