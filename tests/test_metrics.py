"""Accumulating metrics against naive numpy references and hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metamorphosis.errors import ConfigError, DataError
from metamorphosis.losses import IGNORE_INDEX
from metamorphosis.metrics import create_metric, primary_metric

FEW = settings(max_examples=25, deadline=None)


def _feed(metric, outputs, targets):
    for output, target in zip(outputs, targets, strict=True):
        metric.update(torch.from_numpy(output), torch.from_numpy(target))
    return metric.compute()


@FEW
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_binary_accuracy_matches_numpy(sizes, seed):
    rng = np.random.default_rng(seed)
    outputs = [rng.standard_normal((n, 1)) for n in sizes]
    targets = [rng.integers(0, 2, n).astype(np.float32) for n in sizes]
    pairs = zip(outputs, targets, strict=True)
    ref = np.mean(np.concatenate([(o[:, 0] > 0) == (t == 1) for o, t in pairs]))
    result = _feed(create_metric("binary"), outputs, targets)
    assert result == {"accuracy": pytest.approx(ref)}


@FEW
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    k=st.integers(2, 6),
    seed=st.integers(0, 2**16),
)
def test_multiclass_accuracy_matches_numpy(sizes, k, seed):
    rng = np.random.default_rng(seed)
    outputs = [rng.standard_normal((n, k)) for n in sizes]
    targets = [rng.integers(0, k, n) for n in sizes]
    hits = np.concatenate([o.argmax(1) == t for o, t in zip(outputs, targets, strict=True)])
    result = _feed(create_metric("multiclass", num_classes=k), outputs, targets)
    assert result == {"accuracy": pytest.approx(hits.mean())}


def _naive_segmentation(outputs, targets, k):
    confusion = np.zeros((k, k))
    for output, target in zip(outputs, targets, strict=True):
        predicted = output.argmax(1)
        for t, p in zip(target.ravel(), predicted.ravel(), strict=True):
            if t != IGNORE_INDEX:
                confusion[t, p] += 1
    ious = []
    for c in range(k):
        union = confusion[c].sum() + confusion[:, c].sum() - confusion[c, c]
        if union > 0:
            ious.append(confusion[c, c] / union)
    return np.mean(ious), np.trace(confusion) / confusion.sum()


@FEW
@given(
    batches=st.integers(1, 3),
    n=st.integers(1, 3),
    k=st.integers(2, 5),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_segmentation_matches_naive_confusion(batches, n, k, h, w, seed):
    rng = np.random.default_rng(seed)
    outputs = [rng.standard_normal((n, k, h, w)) for _ in range(batches)]
    targets = [rng.integers(-1, k, (n, h, w)) for _ in range(batches)]
    targets[0].flat[0] = 0  # at least one valid pixel
    miou, pixel_accuracy = _naive_segmentation(outputs, targets, k)
    for num_classes in (k, None):
        result = _feed(create_metric("segmentation", num_classes), outputs, targets)
        assert result["miou"] == pytest.approx(miou)
        assert result["pixel_accuracy"] == pytest.approx(pixel_accuracy)


def _one_hot_logits(predicted: list[int], k: int) -> torch.Tensor:
    logits = torch.zeros(1, k, 1, len(predicted))
    for i, p in enumerate(predicted):
        logits[0, p, 0, i] = 1.0
    return logits


def test_segmentation_hand_checked_two_by_two_confusion():
    # truth 0 0 1 1 / prediction 0 1 1 1 → confusion [[1, 1], [0, 2]]
    metric = create_metric("segmentation", num_classes=2)
    metric.update(_one_hot_logits([0, 1, 1, 1], 2), torch.tensor([[[0, 0, 1, 1]]]))
    result = metric.compute()
    assert result["pixel_accuracy"] == pytest.approx(3 / 4)
    assert result["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_segmentation_skips_void_pixels_and_absent_classes():
    metric = create_metric("segmentation", num_classes=4)
    # class 2 and 3 never appear in target or prediction: mIoU over classes 0, 1 only
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    metric.update(_one_hot_logits([0, 1, 3], 4), target)
    assert metric.compute() == {"miou": 1.0, "pixel_accuracy": 1.0}


def test_segmentation_rejects_bad_labels_and_channels():
    metric = create_metric("segmentation", num_classes=3)
    with pytest.raises(DataError, match="label 3"):
        metric.update(torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 3]]]))
    with pytest.raises(ValueError, match="num_classes=3"):
        metric.update(torch.zeros(1, 4, 1, 2), torch.tensor([[[0, 1]]]))


@FEW
@given(
    batches=st.integers(1, 3),
    n=st.integers(1, 3),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_depth_matches_numpy(batches, n, h, w, seed):
    rng = np.random.default_rng(seed)
    outputs = [rng.random((n, 1, h, w)) * 5 for _ in range(batches)]
    targets = [rng.random((n, 1, h, w)) * 5 * (rng.random((n, 1, h, w)) < 0.7)
               for _ in range(batches)]  # fmt: skip
    targets[0].flat[0] = 1.0
    pred = np.concatenate([o.ravel() for o in outputs])
    truth = np.concatenate([t.ravel() for t in targets])
    valid = truth > 0
    error = np.abs(pred[valid] - truth[valid])
    result = _feed(create_metric("depth"), outputs, targets)
    assert result["abs_err"] == pytest.approx(error.mean())
    assert result["rel_err"] == pytest.approx((error / truth[valid]).mean())


def test_depth_hand_checked():
    metric = create_metric("depth")
    output = torch.tensor([[[[1.0, 2.0, 9.0]]]])
    target = torch.tensor([[[[2.0, 2.0, 0.0]]]])  # last pixel invalid
    metric.update(output, target)
    assert metric.compute() == {"abs_err": pytest.approx(0.5), "rel_err": pytest.approx(0.25)}


def _normals_batch(rng, n, h, w):
    pred = rng.standard_normal((n, 3, h, w))
    truth = rng.standard_normal((n, 3, h, w))
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    truth *= (rng.random((n, 1, h, w)) < 0.8).astype(float)
    return pred, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normals_match_numpy(seed):
    rng = np.random.default_rng(seed)
    batches = [_normals_batch(rng, 2, 7, 9) for _ in range(3)]
    angles = []
    for pred, truth in batches:
        p = np.moveaxis(pred, 1, -1).reshape(-1, 3)
        t = np.moveaxis(truth, 1, -1).reshape(-1, 3)
        valid = np.any(t != 0, axis=1)
        p = p[valid] / np.linalg.norm(p[valid], axis=1, keepdims=True)
        cos = np.clip((p * t[valid]).sum(1), -1, 1)
        angles.append(np.degrees(np.arccos(cos)))
    angles = np.concatenate(angles)
    result = _feed(create_metric("normals"), [b[0] for b in batches], [b[1] for b in batches])
    assert result["mean_angle"] == pytest.approx(angles.mean(), abs=1e-9)
    # histogram median: exact to half a 1e-3° bin
    assert result["median_angle"] == pytest.approx(np.median(angles), abs=1e-3)
    for name, limit in (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0)):
        assert result[name] == pytest.approx(100 * np.mean(angles < limit))


def test_normals_hand_checked():
    target = torch.zeros(1, 3, 1, 4)
    target[0, 2] = 1.0
    target[0, :, 0, 3] = 0.0  # invalid pixel
    deg = [0.0, 20.0, 60.0]
    pred = torch.zeros(1, 3, 1, 4, dtype=torch.float64)
    for i, angle in enumerate(deg):
        pred[0, 0, 0, i] = math.sin(math.radians(angle)) * 3.0
        pred[0, 2, 0, i] = math.cos(math.radians(angle)) * 3.0
    metric = create_metric("normals")
    metric.update(pred, target)
    result = metric.compute()
    assert result["mean_angle"] == pytest.approx(80 / 3)
    assert result["median_angle"] == pytest.approx(20.0, abs=1e-3)
    assert result["within_11_25"] == pytest.approx(100 / 3)
    assert result["within_22_5"] == pytest.approx(200 / 3)
    assert result["within_30"] == pytest.approx(200 / 3)


def test_results_do_not_depend_on_batching():
    rng = np.random.default_rng(0)
    pred, truth = _normals_batch(rng, 4, 5, 5)
    whole = _feed(create_metric("normals"), [pred], [truth])
    split = _feed(create_metric("normals"), [pred[:1], pred[1:]], [truth[:1], truth[1:]])
    assert whole == pytest.approx(split)


def test_empty_metric_reports_nan_and_reset_forgets():
    for kind in ("binary", "multiclass", "segmentation", "depth", "normals"):
        values = create_metric(kind, num_classes=3).compute()
        assert values and all(math.isnan(v) for v in values.values())
    metric = create_metric("binary")
    metric.update(torch.tensor([[1.0]]), torch.tensor([0.0]))
    assert metric.compute() == {"accuracy": 0.0}
    metric.reset()
    metric.update(torch.tensor([[1.0]]), torch.tensor([1.0]))
    assert metric.compute() == {"accuracy": 1.0}


def test_primary_metric_and_unknown_kinds():
    assert primary_metric("binary") == ("accuracy", True)
    assert primary_metric("multiclass") == ("accuracy", True)
    assert primary_metric("segmentation") == ("miou", True)
    assert primary_metric("depth") == ("abs_err", False)
    assert primary_metric("normals") == ("mean_angle", False)
    for kind in ("binary", "multiclass", "segmentation", "depth", "normals"):
        name, _ = primary_metric(kind)
        assert name in create_metric(kind, num_classes=3).compute()
    with pytest.raises(ConfigError, match="segmentation"):
        create_metric("regression")
    with pytest.raises(ConfigError, match="normals"):
        primary_metric("regression")


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\)"):
        create_metric("depth").update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))
