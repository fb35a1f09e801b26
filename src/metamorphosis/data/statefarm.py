"""State Farm Distracted Driver Detection (behaviour task, driver identity private).

Files read from the dataset folder (default ``$METAMORPHOSIS_DATA/statefarm``):
``driver_imgs_list.csv`` (``subject,classname,img``) and ``train/<classname>/<img>``.

Columns:

* ``behaviour`` (alias ``classname``): multiclass 10, ``c0..c9`` -> 0..9;
* ``driver`` (alias ``subject``): multiclass 26, driver ids in sorted order -> 0..K-1.

There is no labelled test set, so the split is made here: stratified by
behaviour (seeded) by default, or ``data.split_by: driver`` (alias
``subject``) so that no driver appears in two splits — the setting where the
driver identity must not leak from training into evaluation.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import DataConfig, LabelSpec
from ..errors import DataError
from .base import (
    Column,
    DatasetSplits,
    assemble_splits,
    check_split_by,
    listed_file,
    match_columns,
    read_text,
    resolve_root,
)
from .celeba import ImageFolderDataset
from .registry import register_dataset
from .splits import apply_caps, group_split, stratified_split
from .transforms import ImageTransform

__all__ = ["build_statefarm", "BEHAVIOURS"]

MANIFEST = "driver_imgs_list.csv"
BEHAVIOURS = (
    "safe driving",
    "texting - right",
    "talking on the phone - right",
    "texting - left",
    "talking on the phone - left",
    "operating the radio",
    "drinking",
    "reaching behind",
    "hair and makeup",
    "talking to passenger",
)
ALIASES = {"classname": "behaviour", "subject": "driver"}


def _read_manifest(path: Path) -> tuple[list[str], list[str], list[str]]:
    reader = csv.DictReader(io.StringIO(read_text(path, "StateFarm manifest"), newline=""))
    try:
        return _manifest_columns(path, reader)
    except csv.Error as exc:
        raise DataError(f"{path} row {reader.line_num}: not valid CSV ({exc})") from None


def _manifest_columns(
    path: Path, reader: csv.DictReader[str]
) -> tuple[list[str], list[str], list[str]]:
    missing = {"subject", "classname", "img"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{path} row 1: missing column(s) {sorted(missing)}")
    subjects, classnames, images = [], [], []
    for row in reader:
        values = [row["subject"], row["classname"], row["img"]]
        if None in values:  # DictReader fills a short row with None
            raise DataError(f"{path} row {reader.line_num}: expected subject,classname,img")
        subjects.append(values[0].strip())
        classnames.append(values[1].strip())
        images.append(values[2].strip())
    if not images:
        raise DataError(f"{path}: the manifest has a header but no rows")
    return subjects, classnames, images


def _behaviour_ids(path: Path, classnames: Sequence[str]) -> np.ndarray:
    valid = {f"c{k}": k for k in range(len(BEHAVIOURS))}
    ids = np.zeros(len(classnames), dtype=np.int64)
    for row, name in enumerate(classnames, start=2):
        if name not in valid:
            raise DataError(f"{path} row {row}: classname {name!r} is invalid; expected c0..c9")
        ids[row - 2] = valid[name]
    return ids


@register_dataset("statefarm")
def build_statefarm(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """Seeded stratified (or by-driver) split of the labelled StateFarm images."""
    folder = resolve_root(data, root, "statefarm")
    split_by = ALIASES.get(data.split_by or "", data.split_by)
    check_split_by(data, ("driver", "subject"))
    offered = [
        Column("behaviour", ("multiclass",), len(BEHAVIOURS)),
        Column("driver", ("multiclass",)),
    ]
    columns = match_columns("statefarm", labels, offered, ALIASES)

    manifest = folder / MANIFEST
    subjects, classnames, images = _read_manifest(manifest)
    behaviour = _behaviour_ids(manifest, classnames)
    drivers = sorted(set(subjects))
    driver = np.array([drivers.index(s) for s in subjects], dtype=np.int64)
    by_column = {"behaviour": behaviour, "driver": driver}
    class_counts = {"behaviour": len(BEHAVIOURS), "driver": len(drivers)}
    class_names = {"behaviour": [f"c{k}" for k in range(len(BEHAVIOURS))], "driver": drivers}

    if split_by == "driver":
        split = group_split(driver, data.val_fraction, data.test_fraction, seed)
    else:
        split = stratified_split(behaviour, data.val_fraction, data.test_fraction, seed)
    transform = ImageTransform(data.image_size)
    datasets = []
    for split_name, indices in zip(
        ("train", "val", "test"),
        apply_caps(split, data.max_train, data.max_eval, seed),
        strict=True,
    ):
        rel = [f"train/{classnames[i]}/{images[i]}" for i in indices]
        paths = [
            listed_file(folder, r, "StateFarm image", f"{manifest} row {i + 2}")
            for r, i in zip(rel, indices, strict=True)
        ]
        dataset = ImageFolderDataset(
            paths=paths,
            item_ids=rel,
            labels=labels,
            targets={name: by_column[col.name][indices] for name, col in columns.items()},
            transform=transform,
            cache=data.cache,
            description=f"statefarm {split_name}",
        )
        dataset.class_names = {name: class_names[col.name] for name, col in columns.items()}
        datasets.append(dataset)
    classes = {name: class_counts[col.name] for name, col in columns.items()}
    return assemble_splits(datasets, labels, classes, transform)
