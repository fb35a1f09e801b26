"""The embedded synthetic scenes: determinism, label formats, exact maps, balance."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import IGNORE_INDEX, UnknownItemError, build_datasets, render_scene
from metamorphosis.data.synthetic import LARGE_FRACTION
from metamorphosis.errors import ConfigError, DataError

CLASSIFICATION = ("shape", "count", "colour", "large", "background")
ALL_LABELS = (
    LabelSpec("shape", kind="multiclass"),
    LabelSpec("count", kind="multiclass"),
    LabelSpec("colour", kind="multiclass"),
    LabelSpec("large", kind="binary"),
    LabelSpec("gender_like", column="background", kind="binary"),
    LabelSpec("seg", kind="segmentation"),
    LabelSpec("depth", kind="depth"),
    LabelSpec("normals", kind="normals"),
)


@pytest.fixture(scope="module")
def scenes() -> list:
    """1500 scenes at 32×32 (rendering them is part of what is tested: speed)."""
    start = time.perf_counter()
    rendered = [render_scene(0, index, (32, 32)) for index in range(1500)]
    assert time.perf_counter() - start < 15.0  # ~1 s on one idle core
    return rendered


def test_every_label_kind_has_the_item_format() -> None:
    splits = build_datasets(DataConfig(num_samples=40, image_size=(16, 24)), ALL_LABELS, seed=0)
    image, labels = splits.train[0]
    assert image.shape == (3, 16, 24) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert list(labels) == [spec.name for spec in ALL_LABELS]
    for name in ("shape", "count", "colour"):
        assert labels[name].shape == () and labels[name].dtype == torch.int64
    for name in ("large", "gender_like"):
        assert labels[name].dtype == torch.float32 and labels[name].item() in (0.0, 1.0)
    assert labels["seg"].shape == (16, 24) and labels["seg"].dtype == torch.int64
    assert labels["depth"].shape == (1, 16, 24) and labels["depth"].dtype == torch.float32
    assert labels["normals"].shape == (3, 16, 24) and labels["normals"].dtype == torch.float32
    assert splits.input_shape == (3, 16, 24)
    assert splits.num_classes == {
        "shape": 3,
        "count": 3,
        "colour": 4,
        "large": 2,
        "gender_like": 2,
        "seg": 4,
    }


def test_split_sizes_ids_and_caps() -> None:
    data = DataConfig(num_samples=100, val_fraction=0.1, test_fraction=0.2)
    splits = build_datasets(data, ALL_LABELS[:1], seed=0)
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sizes == (70, 10, 20)
    ids = [set(ds.item_ids) for ds in (splits.train, splits.val, splits.test)]
    assert len(set.union(*ids)) == 100
    capped = build_datasets(
        DataConfig(num_samples=100, val_fraction=0.1, test_fraction=0.2, max_train=7, max_eval=4),
        ALL_LABELS[:1],
        seed=0,
    )
    assert (len(capped.train), len(capped.val), len(capped.test)) == (7, 4, 4)
    assert set(capped.train.item_ids) <= ids[0] and set(capped.test.item_ids) <= ids[2]


def test_deterministic_for_a_seed_and_independent_of_caps() -> None:
    data = DataConfig(num_samples=50, image_size=16)
    first = build_datasets(data, ALL_LABELS, seed=3)
    again = build_datasets(data, ALL_LABELS, seed=3)
    other = build_datasets(data, ALL_LABELS, seed=4)
    capped = build_datasets(
        DataConfig(num_samples=50, image_size=16, max_train=5), ALL_LABELS, seed=3
    )
    for index in (0, 7):
        image, labels = first.train[index]
        image2, labels2 = again.train[index]
        assert torch.equal(image, image2)
        assert all(torch.equal(labels[k], labels2[k]) for k in labels)
        assert not torch.equal(image, other.train[index][0])
    item_id = capped.train.item_ids[2]
    assert torch.equal(
        capped.train.get_item_by_id(item_id)[0], first.train.get_item_by_id(item_id)[0]
    )


def test_get_item_by_id_and_unknown_ids() -> None:
    splits = build_datasets(DataConfig(num_samples=20, image_size=16), ALL_LABELS[:2], seed=0)
    dataset = splits.val
    item_id = dataset.item_ids[1]
    image, labels = dataset.get_item_by_id(item_id)
    assert torch.equal(image, dataset[1][0]) and labels.keys() == dataset[1][1].keys()
    with pytest.raises(UnknownItemError, match="nope") as info:
        dataset.get_item_by_id("nope")
    assert isinstance(info.value, KeyError) and isinstance(info.value, DataError)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_cache_gives_identical_items_and_is_not_aliased() -> None:
    cached = build_datasets(
        DataConfig(num_samples=20, image_size=16, cache=True), ALL_LABELS, seed=0
    ).train
    fresh = build_datasets(
        DataConfig(num_samples=20, image_size=16, cache=False), ALL_LABELS, seed=0
    ).train
    image, labels = cached[3]
    image.zero_()
    for tensor in labels.values():
        tensor.zero_()
    image2, labels2 = cached[3]
    image3, labels3 = fresh[3]
    assert torch.equal(image2, image3) and not torch.equal(image2, image)
    assert all(torch.equal(labels2[k], labels3[k]) for k in labels2)


def test_dataloader_collates_batches() -> None:
    splits = build_datasets(DataConfig(num_samples=40, image_size=16), ALL_LABELS, seed=0)
    for workers in (0, 2):
        images, labels = next(iter(DataLoader(splits.train, batch_size=8, num_workers=workers)))
        assert images.shape == (8, 3, 16, 16)
        assert labels["seg"].shape == (8, 16, 16) and labels["large"].shape == (8,)
        assert labels["depth"].shape == (8, 1, 16, 16)


def test_dense_maps_are_exact(scenes: list) -> None:
    for scene in scenes[:200]:
        assert scene.depth.min() > 0
        norms = np.linalg.norm(scene.normals, axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        assert scene.seg.min() >= 0 and scene.seg.max() <= 3
        assert not np.any(scene.seg == IGNORE_INDEX)
        flat = (scene.seg == 2) | (scene.seg == 3)
        np.testing.assert_allclose(scene.normals[flat], np.tile([0, 0, 1], (flat.sum(), 1)))
        # circles bulge towards the camera: nearer in the middle than at the rim
        if np.any(scene.seg == 1):
            assert scene.normals[scene.seg == 1, 2].min() >= 0


def test_background_normals_match_the_depth_gradient(scenes: list) -> None:
    """Naive reference: for an orthographic camera n ∝ (dD/dx, -dD/dy, pixel size)."""
    scene = scenes[0]
    height, width = scene.seg.shape
    background = scene.seg == 0
    both = background[1:-1, :] & background[:-2, :] & background[2:, :]
    rows, cols = np.nonzero(both)
    rows = rows + 1
    d_dy = (scene.depth[rows + 1, cols] - scene.depth[rows - 1, cols]) / 2
    reference = np.stack(
        [np.zeros_like(d_dy), -d_dy, np.full_like(d_dy, 2.0 / max(height, width))], 1
    )
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(scene.normals[rows, cols], reference, atol=1e-4)


def test_bulge_normals_match_the_depth_gradient(scenes: list) -> None:
    scene = next(s for s in scenes if np.sum(s.seg == 1) > 60)
    height, width = scene.seg.shape
    inside = scene.seg == 1
    core = inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2]
    core &= inside[1:-1, 2:]
    rows, cols = np.nonzero(core)
    rows, cols = rows + 1, cols + 1
    d_dx = (scene.depth[rows, cols + 1] - scene.depth[rows, cols - 1]) / 2
    d_dy = (scene.depth[rows + 1, cols] - scene.depth[rows - 1, cols]) / 2
    reference = np.stack([d_dx, -d_dy, np.full_like(d_dx, 2.0 / max(height, width))], 1)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    cosine = np.sum(reference * scene.normals[rows, cols], axis=1)
    assert np.median(cosine) > 0.99


def test_classes_are_roughly_balanced(scenes: list) -> None:
    labels = {k: np.array([s.labels[k] for s in scenes]) for k in CLASSIFICATION}
    bounds = {
        "shape": (3, 0.25, 0.42),
        "count": (3, 0.27, 0.40),
        "colour": (4, 0.19, 0.31),
        "large": (2, 0.38, 0.62),
        "background": (2, 0.44, 0.56),
    }
    for name, (classes, low, high) in bounds.items():
        share = np.bincount(labels[name], minlength=classes) / len(scenes)
        assert len(share) == classes and np.all(share > low) and np.all(share < high), name


def test_public_labels_are_independent_of_background_and_each_other(scenes: list) -> None:
    labels = {k: np.array([s.labels[k] for s in scenes]) for k in CLASSIFICATION}
    warm = labels["background"] == 1
    for name in ("shape", "count", "colour", "large"):
        values = labels[name]
        for value in np.unique(values):
            gap = abs(np.mean(values[warm] == value) - np.mean(values[~warm] == value))
            assert gap < 0.08, (name, value)
    for a in ("shape", "count", "colour", "large"):
        for b in ("shape", "count", "colour", "large"):
            if a < b:
                assert np.mean(labels[a] == labels[b]) < 0.6, (a, b)


def test_background_is_visible_in_the_image(scenes: list) -> None:
    """The private attribute must be recoverable from pixels, or attacks prove nothing."""
    correct = 0
    for scene in scenes[:300]:
        pixels = scene.image[scene.seg == 0].astype(np.float32)
        guess = int(pixels[:, 0].mean() > pixels[:, 2].mean())
        correct += guess == scene.labels["background"]
    assert correct / 300 > 0.97


def test_large_label_matches_the_segmentation(scenes: list) -> None:
    for scene in scenes[:100]:
        areas = np.bincount(scene.seg.ravel(), minlength=4)[1:]
        if scene.labels["count"] == 0:
            covered = areas.sum() / scene.seg.size
            assert scene.labels["large"] == int(covered > LARGE_FRACTION)
            assert areas[scene.labels["shape"]] == areas.sum()


def test_unsupported_labels_and_options() -> None:
    with pytest.raises(ConfigError, match=r"'age'.*'age'.*offers: shape"):
        build_datasets(DataConfig(), [LabelSpec("age")], seed=0)
    with pytest.raises(ConfigError, match="'seg' as kind 'depth'"):
        build_datasets(DataConfig(), [LabelSpec("d", column="seg", kind="depth")], seed=0)
    with pytest.raises(ConfigError, match="split_by"):
        build_datasets(
            DataConfig(split_by="shape"), [LabelSpec("shape", kind="multiclass")], seed=0
        )


def test_class_targets_and_names() -> None:
    splits = build_datasets(DataConfig(num_samples=30, image_size=16), ALL_LABELS, seed=0)
    targets = splits.train.class_targets("shape")
    assert targets.dtype == np.int64 and len(targets) == len(splits.train)
    assert targets[4] == splits.train[4][1]["shape"].item()
    assert splits.train.class_names["shape"] == ["circle", "square", "triangle"]
    with pytest.raises(ConfigError):
        splits.train.class_targets("seg")
