"""The CSV dataset (CONTRACT): good manifests load, bad ones name the row and file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError, DataError

HEADER = "image,smile,animal,age"
ROWS = [
    "img/a0.png,1,cat,0",
    "img/a1.png,0,dog,1",
    "img/a2.png,true,bird,2",
    "img/a3.png,False,cat,0",
    "img/a4.png,yes,dog,1",
    "img/a5.png,NO,bird,2",
    "img/a6.png,-1,cat,0",
    "img/a7.png,+1,dog,1",
    "img/a8.png,1,bird,2",
    "img/a9.png,0,cat,0",
    "img/b0.png,1,dog,1",
    "img/b1.png,0,bird,2",
]
SMILE = [1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0]
LABELS = (
    LabelSpec("smile", kind="binary"),
    LabelSpec("animal", kind="multiclass"),
    LabelSpec("age", kind="multiclass"),
)


def _write_manifest(root: Path, header: str, rows: list[str]) -> None:
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")


def _dataset(
    root: Path, write_image: Callable[..., Path], header: str = HEADER, rows: list[str] = ROWS
) -> Path:
    """Images for every row, then the manifest."""
    for i, row in enumerate(rows):
        write_image(root / row.split(",")[0], seed=i)
    _write_manifest(root, header, rows)
    return root


def _build(root: Path, labels=LABELS, **kwargs: object):  # noqa: ANN202
    data = DataConfig(name="csv", root=str(root), image_size=8, **kwargs)  # type: ignore[arg-type]
    return build_datasets(data, labels, seed=0)


def _all_items(splits) -> dict:  # noqa: ANN001
    items = {}
    for dataset in (splits.train, splits.val, splits.test):
        for index, item_id in enumerate(dataset.item_ids):
            items[item_id] = dataset[index]
    return items


def test_good_manifest_loads(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    splits = _build(_dataset(tmp_path, write_image), val_fraction=0.2, test_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 2)
    assert splits.num_classes == {"smile": 2, "animal": 3, "age": 3}
    items = _all_items(splits)
    assert len(items) == 12
    for row, smile in zip(ROWS, SMILE, strict=True):
        image, labels = items[row.split(",")[0]]
        assert image.shape == (3, 8, 8)
        assert labels["smile"].dtype == torch.float32 and labels["smile"].item() == smile
        assert labels["animal"].dtype == torch.int64
        assert labels["animal"].item() == ["bird", "cat", "dog"].index(row.split(",")[2])
        assert labels["age"].item() == int(row.split(",")[3])
    assert splits.train.class_names["animal"] == ["bird", "cat", "dog"]
    assert splits.test.class_names["age"] == ["0", "1", "2"]


def test_items_match_the_transform_of_the_file(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    splits = _build(_dataset(tmp_path, write_image))
    item_id = splits.train.item_ids[0]
    with Image.open(tmp_path / item_id) as image:
        expected = splits.transform(image)
    assert torch.equal(splits.train.get_item_by_id(item_id)[0], expected)


def test_seeded_split_is_stratified_and_deterministic(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    root = _dataset(tmp_path, write_image)
    first = _build(root, val_fraction=0.25, test_fraction=0.25)
    again = _build(root, val_fraction=0.25, test_fraction=0.25)
    assert first.val.item_ids == again.val.item_ids
    for dataset in (first.val, first.test):  # smile is 50 / 50: 3 items hold both classes
        assert set(dataset.class_targets("smile")) == {0, 1}


def test_split_column_fixes_the_split(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    splits_of = ["train"] * 8 + ["val", "VAL", "test", "test"]
    rows = [f"{row},{split}" for row, split in zip(ROWS, splits_of, strict=True)]
    splits = _build(_dataset(tmp_path, write_image, HEADER + ",split", rows))
    assert splits.val.item_ids == ["img/a8.png", "img/a9.png"]
    assert splits.test.item_ids == ["img/b0.png", "img/b1.png"]


def test_split_by_a_column_keeps_groups_apart(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    person = {row.split(",")[0]: f"p{i % 4}" for i, row in enumerate(ROWS)}
    rows = [f"{row},{person[row.split(',')[0]]}" for row in ROWS]
    splits = _build(_dataset(tmp_path, write_image, HEADER + ",person", rows), split_by="person")
    groups = [{person[i] for i in ds.item_ids} for ds in (splits.train, splits.val, splits.test)]
    assert all(groups)
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_integer_classes_honour_num_classes(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    root = _dataset(tmp_path, write_image)
    splits = _build(root, labels=(LabelSpec("age", kind="multiclass", num_classes=5),))
    assert splits.num_classes == {"age": 5}
    with pytest.raises(DataError, match=r"row 4 .*a2\.png.*out of range"):
        _build(root, labels=(LabelSpec("age", kind="multiclass", num_classes=2),))


BAD_CASES = {  # row number (header = 1), replacement row, expected message
    "missing file": (4, "img/missing.png,1,cat,0", r"row 4 .*missing\.png.*does not exist"),
    "maybe": (3, "img/a1.png,maybe,cat,0", r"row 3 .*a1\.png.*'smile'.*'maybe'"),
    "empty label": (6, "img/a4.png,1,,0", r"row 6 .*a4\.png.*'animal' is empty"),
    "negative class": (2, "img/a0.png,1,cat,-2", r"row 2 .*a0\.png.*out of range"),
    "duplicate": (5, "img/a0.png,1,cat,0", r"row 5 .*a0\.png.*listed twice.*row 2"),
    "fields": (7, "img/a5.png,1,cat", r"row 7.*expected 4 fields, got 3"),
    "no image": (7, ",1,cat,0", r"row 7 .*'image' column is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_rows_name_row_and_file(
    case: str, tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    row_number, replacement, pattern = BAD_CASES[case]
    _dataset(tmp_path, write_image)
    rows = list(ROWS)
    rows[row_number - 2] = replacement
    _write_manifest(tmp_path, HEADER, rows)
    with pytest.raises(DataError, match=pattern) as info:
        _build(tmp_path)
    assert str(tmp_path / "labels.csv") in str(info.value)


def test_bad_split_value(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    rows = [f"{row},{'dev' if i == 3 else 'train'}" for i, row in enumerate(ROWS)]
    with pytest.raises(DataError, match=r"labels\.csv, row 5 .*a3\.png.*split 'dev'"):
        _build(_dataset(tmp_path, write_image, HEADER + ",split", rows))


def test_unknown_and_missing_columns(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    root = _dataset(tmp_path, write_image)
    with pytest.raises(DataError, match=r"labels\.csv, row 1: no column 'gender'"):
        _build(root, labels=(LabelSpec("gender"),))
    (root / "labels.csv").write_text("file,smile\nimg/a0.png,1\n")
    with pytest.raises(DataError, match=r"row 1: no 'image' column"):
        _build(root, labels=(LabelSpec("smile"),))


def test_dense_kinds_are_a_config_error(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    root = _dataset(tmp_path, write_image)
    with pytest.raises(ConfigError, match=r"'mask'.*'segmentation'.*'csv'.*smile, animal, age"):
        _build(root, labels=(LabelSpec("mask", kind="segmentation"),))


def test_unreadable_image_fails_at_load_with_row_and_file(
    tmp_path: Path, write_image: Callable[..., Path]
) -> None:
    root = _dataset(tmp_path, write_image)
    (root / "img" / "a3.png").write_bytes(b"not a png at all")
    splits = _build(root, val_fraction=0.0, test_fraction=0.0)  # the manifest itself is fine
    index = splits.train.index_of("img/a3.png")
    with pytest.raises(DataError, match=r"labels\.csv, row 5: cannot read image file .*a3\.png"):
        splits.train[index]


def test_root_is_required_and_relative_to_cwd(
    tmp_path: Path, write_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError, match="data.root"):
        build_datasets(DataConfig(name="csv"), LABELS, seed=0)
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(DataConfig(name="csv", root=str(tmp_path / "nowhere")), LABELS, seed=0)
    _dataset(tmp_path / "mine", write_image)
    monkeypatch.chdir(tmp_path)
    splits = build_datasets(DataConfig(name="csv", root="mine", image_size=8), LABELS, seed=0)
    monkeypatch.chdir("/")  # a later chdir does not move the dataset
    assert splits.train[0][0].shape == (3, 8, 8)
    other = build_datasets(
        DataConfig(name="csv", root="/nowhere", image_size=8),
        LABELS,
        seed=0,
        root=tmp_path / "mine",
    )
    assert other.train.item_ids == splits.train.item_ids


def test_string_vocabulary_is_sorted(tmp_path: Path, write_image: Callable[..., Path]) -> None:
    rows = [f"img/c{i}.png,{name}" for i, name in enumerate(["zebra", "ant", "moth", "ant"] * 3)]
    splits = _build(
        _dataset(tmp_path, write_image, "image,insect", rows),
        labels=(LabelSpec("insect", kind="multiclass"),),
    )
    assert splits.num_classes == {"insect": 3}
    names = splits.train.class_names["insect"]
    assert names == ["ant", "moth", "zebra"]
    targets = np.concatenate(
        [ds.class_targets("insect") for ds in (splits.train, splits.val, splits.test)]
    )
    assert sorted(np.bincount(targets)) == [3, 3, 6]
