"""NYUv2 / Cityscapes loaders on tiny fixtures in the exact MTAN ``.npy`` layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import IGNORE_INDEX, build_datasets
from metamorphosis.errors import ConfigError, DataError

HEIGHT, WIDTH = 24, 32
DENSE = (
    LabelSpec("seg", kind="segmentation"),
    LabelSpec("depth", kind="depth"),
    LabelSpec("normals", kind="normals"),
)


def _write_layout(
    root: Path,
    classes: int,
    *,
    train: int = 10,
    val: int = 3,
    normals: bool = True,
    depth: bool = True,
) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            files = {
                "image": rng.random((HEIGHT, WIDTH, 3)).astype(np.float32),
                "label": rng.integers(-1, classes, (HEIGHT, WIDTH)).astype(np.float32),
            }
            if depth:
                d = rng.uniform(0.5, 10.0, (HEIGHT, WIDTH, 1)).astype(np.float32)
                d[:4] = 0.0  # invalid rows
                files["depth"] = d
            if normals:
                n = rng.normal(size=(HEIGHT, WIDTH, 3)).astype(np.float32)
                n /= np.linalg.norm(n, axis=-1, keepdims=True)
                n[:, :6] = 0.0  # invalid columns
                files["normal"] = n
            for folder, array in files.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / split / folder / f"{index}.npy", array)
    return root


def test_nyuv2_at_native_size_is_exact(tmp_path: Path) -> None:
    root = _write_layout(tmp_path / "nyuv2", 13)
    data = DataConfig(name="nyuv2", root=str(root), image_size=(HEIGHT, WIDTH), val_fraction=0.2)
    splits = build_datasets(data, DENSE, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 3)
    assert splits.num_classes == {"seg": 13}
    assert splits.test.item_ids == ["val/0", "val/1", "val/2"]
    assert set(splits.train.item_ids) | set(splits.val.item_ids) == {
        f"train/{i}" for i in range(10)
    }
    image, labels = splits.test[1]
    raw = {f: np.load(root / "val" / f / "1.npy") for f in ("image", "label", "depth", "normal")}
    expected_image = np.rint(raw["image"] * 255) / 255 * 2 - 1
    np.testing.assert_allclose(image.numpy(), expected_image.transpose(2, 0, 1), atol=1e-6)
    assert labels["seg"].dtype == torch.int64
    np.testing.assert_array_equal(labels["seg"].numpy(), raw["label"].astype(np.int64))
    assert labels["seg"].min() == IGNORE_INDEX
    np.testing.assert_array_equal(labels["depth"].numpy(), raw["depth"].transpose(2, 0, 1))
    np.testing.assert_allclose(
        labels["normals"].numpy(), raw["normal"].transpose(2, 0, 1), atol=1e-6
    )


def test_nyuv2_resized_keeps_invalid_pixels_invalid(tmp_path: Path) -> None:
    root = _write_layout(tmp_path / "nyuv2", 13)
    splits = build_datasets(
        DataConfig(name="nyuv2", root=str(root), image_size=(12, 16)), DENSE, seed=0
    )
    image, labels = splits.train[0]
    assert image.shape == (3, 12, 16)
    assert labels["seg"].shape == (12, 16) and labels["depth"].shape == (1, 12, 16)
    assert labels["normals"].shape == (3, 12, 16)
    seg = labels["seg"]
    assert seg.min() >= IGNORE_INDEX and seg.max() < 13
    assert torch.all(labels["depth"][:, :2] == 0) and torch.all(labels["depth"][:, 2:] > 0)
    norms = labels["normals"].norm(dim=0)
    assert torch.all(norms[:, :3] == 0)
    torch.testing.assert_close(norms[:, 3:], torch.ones_like(norms[:, 3:]))


def test_cityscapes_has_no_normals_and_seven_classes(tmp_path: Path) -> None:
    root = _write_layout(tmp_path / "cityscapes", 7, normals=False)
    data = DataConfig(name="cityscapes", root=str(root), image_size=(HEIGHT, WIDTH))
    splits = build_datasets(data, DENSE[:2], seed=0)
    assert splits.num_classes == {"seg": 7}
    assert splits.train[0][1]["seg"].max() < 7
    with pytest.raises(ConfigError, match=r"'normals'.*'cityscapes'.*offers: seg"):
        build_datasets(data, DENSE, seed=0)


def test_missing_depth_and_bad_files(tmp_path: Path) -> None:
    root = _write_layout(tmp_path / "cityscapes", 7, normals=False, depth=False)
    data = DataConfig(name="cityscapes", root=str(root), image_size=(HEIGHT, WIDTH))
    with pytest.raises(DataError, match=r"depth file .*train/depth/0\.npy"):
        build_datasets(data, DENSE[:2], seed=0)
    np.save(root / "train" / "label" / "0.npy", np.full((HEIGHT, WIDTH), 9.0, np.float32))
    splits = build_datasets(data, DENSE[:1], seed=0)
    with pytest.raises(DataError, match=r"label/0\.npy holds class 9"):
        splits.train.get_item_by_id("train/0")
    with pytest.raises(DataError, match="MTAN"):
        build_datasets(DataConfig(name="nyuv2", root=str(tmp_path)), DENSE, seed=0)


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    root = _write_layout(tmp_path / "nyuv2", 13, train=4, val=1)
    np.save(
        root / "train" / "image" / "0.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True
    )
    splits = build_datasets(
        DataConfig(name="nyuv2", root=str(root), val_fraction=0.0), DENSE, seed=0
    )
    with pytest.raises(DataError, match=r"image/0\.npy"):
        splits.train.get_item_by_id("train/0")
