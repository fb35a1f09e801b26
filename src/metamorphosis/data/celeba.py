"""CelebA in its official folder layout (the paper's main dataset).

Files read from the dataset folder (default ``$METAMORPHOSIS_DATA/celeba``):

* ``img_align_celeba/*.jpg`` — the aligned faces;
* ``list_attr_celeba.txt`` — line 1 the count, line 2 the 40 attribute names,
  then ``filename v1 … v40`` with values ``1`` / ``-1`` (binary 1 / 0);
* ``identity_CelebA.txt`` — ``filename identity`` (only read for the
  ``identity`` column, remapped to ``0..K-1`` in increasing order of the
  original ids over the whole file, so ids do not depend on caps or splits);
* ``list_eval_partition.txt`` — ``filename 0|1|2`` = train / val / test.

Columns: every attribute name (binary, or multiclass with 2 classes) and
``identity`` (multiclass). The split is the official partition, so
``val_fraction`` / ``test_fraction`` / ``split_by`` do not apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import DataConfig, LabelSpec
from ..errors import DataError
from .base import (
    Column,
    DatasetSplits,
    LabelledImageDataset,
    Sample,
    assemble_splits,
    check_split_by,
    listed_file,
    load_rgb,
    match_columns,
    read_text,
    resolve_root,
)
from .registry import register_dataset
from .splits import apply_caps, split_from_codes
from .transforms import ImageTransform

__all__ = ["ImageFolderDataset", "build_celeba", "read_attributes"]

IMAGE_DIR = "img_align_celeba"
ATTRIBUTES_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
PARTITION_FILE = "list_eval_partition.txt"


class ImageFolderDataset(LabelledImageDataset):
    """Images read from files, with classification labels known up front.

    Shared by CelebA and StateFarm: ``paths[i]`` is decoded (and cached) on
    first access; ``targets`` hold each label's value per item.
    """

    def __init__(
        self,
        *,
        paths: Sequence[Path],
        item_ids: Sequence[str],
        labels: Sequence[LabelSpec],
        targets: dict[str, np.ndarray],
        transform: ImageTransform,
        cache: bool,
        description: str,
    ) -> None:
        super().__init__(
            item_ids=item_ids,
            labels=labels,
            transform=transform,
            cache=cache,
            description=description,
            targets=targets,
        )
        self.paths = list(paths)

    def _decode(self, index: int) -> Sample:
        return load_rgb(self.paths[index], self.transform), {}


def _read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in read_text(path, "CelebA file").splitlines() if line.strip()]


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Attribute names and ``filename -> raw values`` from ``list_attr_celeba.txt``."""
    rows = _read_lines(path)
    if len(rows) < 2:
        raise DataError(f"{path}: expected a count line and a line of attribute names")
    names = rows[1]
    values: dict[str, list[str]] = {}
    for line_no, row in enumerate(rows[2:], start=3):
        if len(row) != len(names) + 1:
            raise DataError(
                f"{path} line {line_no}: expected a file name and {len(names)} values, "
                f"got {len(row)} fields"
            )
        values[row[0]] = row[1:]
    return names, values


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line_no, row in enumerate(_read_lines(path), start=1):
        if len(row) != 2:
            raise DataError(f"{path} line {line_no}: expected 'filename value', got {row}")
        pairs.append((row[0], row[1]))
    return pairs


def _attribute_targets(
    path: Path,
    names: Sequence[str],
    values: dict[str, list[str]],
    files: Sequence[str],
    column: str,
) -> np.ndarray:
    position = names.index(column)
    out = np.zeros(len(files), dtype=np.int64)
    for i, name in enumerate(files):
        row = values.get(name)
        if row is None:
            raise DataError(f"{path}: no attributes for {name}, which the partition file lists")
        if row[position] not in ("1", "-1"):
            raise DataError(f"{path}: {name} {column}={row[position]!r}; expected 1 or -1")
        out[i] = row[position] == "1"
    return out


def _identity_targets(path: Path, files: Sequence[str]) -> tuple[np.ndarray, int]:
    pairs = _read_pairs(path)
    try:
        raw = {name: int(value) for name, value in pairs}
    except ValueError as exc:
        raise DataError(f"{path}: identity ids must be integers ({exc})") from None
    remap = {original: new for new, original in enumerate(sorted(set(raw.values())))}
    missing = [name for name in files if name not in raw]
    if missing:
        raise DataError(f"{path}: no identity for {missing[0]} (and {len(missing) - 1} more)")
    return np.array([remap[raw[name]] for name in files], dtype=np.int64), len(remap)


@register_dataset("celeba")
def build_celeba(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """Official partition, attribute and identity labels, capped by max_train / max_eval."""
    folder = resolve_root(data, root, "celeba")
    check_split_by(data, ())
    attr_path = folder / ATTRIBUTES_FILE
    names, values = read_attributes(attr_path)
    offered = [Column(name, ("binary", "multiclass"), 2) for name in names]
    offered.append(Column("identity", ("multiclass",)))
    columns = match_columns("celeba", labels, offered)

    partition = _read_pairs(folder / PARTITION_FILE)
    if not partition:
        raise DataError(f"{folder / PARTITION_FILE} lists no images; expected 'filename 0|1|2'")
    files = [name for name, _ in partition]
    split_ids = np.array([_split_code(folder / PARTITION_FILE, v) for _, v in partition])
    targets: dict[str, np.ndarray] = {}
    classes: dict[str, int] = {}
    for spec in labels:
        column = columns[spec.name].name
        if column == "identity":
            targets[spec.name], classes[spec.name] = _identity_targets(
                folder / IDENTITY_FILE, files
            )
        else:
            targets[spec.name] = _attribute_targets(attr_path, names, values, files, column)
            classes[spec.name] = 2

    split = split_from_codes(split_ids)
    transform = ImageTransform(data.image_size)
    datasets = []
    for split_name, indices in zip(
        ("train", "val", "test"),
        apply_caps(split, data.max_train, data.max_eval, seed),
        strict=True,
    ):
        listed_in = str(folder / PARTITION_FILE)
        paths = [
            listed_file(folder / IMAGE_DIR, files[i], "CelebA image", listed_in) for i in indices
        ]
        datasets.append(
            ImageFolderDataset(
                paths=paths,
                item_ids=[files[i] for i in indices],
                labels=labels,
                targets={name: values_[indices] for name, values_ in targets.items()},
                transform=transform,
                cache=data.cache,
                description=f"celeba {split_name}",
            )
        )
    return assemble_splits(datasets, labels, classes, transform)


def _split_code(path: Path, value: str) -> int:
    if value not in ("0", "1", "2"):
        raise DataError(f"{path}: split value {value!r} is invalid; expected 0, 1 or 2")
    return int(value)
