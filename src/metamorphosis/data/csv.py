"""Bring your own data: a folder of images and a CSV manifest (CONTRACT).

``data: {name: csv, root: DIR, manifest: labels.csv}``. The manifest has a
column ``image`` (path relative to ``root``) and one column per label; a task
or private attribute names its column and kind (``binary`` | ``multiclass``).

* ``binary`` values: ``0/1``, ``true/false``, ``yes/no`` or ``1/-1`` (any case).
* ``multiclass`` values: integers ``0..K-1`` (K = the largest + 1, or the
  label's ``num_classes``), or strings, which are numbered in sorted order;
  every split exposes the names as ``dataset.class_names[label_name]``.
* An optional ``split`` column (``train`` / ``val`` / ``test``) fixes the
  split; else a seeded split stratified on the first label (or grouped by the
  column ``data.split_by`` names, so that no group spans two splits).

The manifest is checked completely when the datasets are built (every file
exists, every label value parses), so a bad row fails at once rather than
hours into training; images are decoded lazily. Every error names the
manifest row (the header is row 1) and the image file.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig, LabelSpec
from ..errors import ConfigError, DataError
from .base import (
    DatasetSplits,
    LabelledImageDataset,
    Sample,
    assemble_splits,
    load_rgb,
)
from .registry import register_dataset
from .splits import Split, apply_caps, group_split, split_from_codes, stratified_split
from .transforms import ImageTransform

__all__ = ["CsvDataset", "build_csv", "parse_binary"]

IMAGE_COLUMN = "image"
SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")
_BINARY = {
    "1": 1, "0": 0, "+1": 1, "-1": 0, "1.0": 1, "0.0": 0, "-1.0": 0,
    "true": 1, "false": 0, "yes": 1, "no": 0,
}  # fmt: skip
_INTEGER = re.compile(r"[+-]?\d+(\.0*)?")


@dataclass(frozen=True)
class _Row:
    number: int  # 1-based, the header is row 1
    values: dict[str, str]


def parse_binary(value: str) -> int | None:
    """0 / 1 for an accepted binary spelling, None otherwise."""
    return _BINARY.get(value.strip().lower())


class CsvDataset(LabelledImageDataset):
    """One split of a CSV manifest; remembers each item's row for error messages."""

    def __init__(
        self,
        *,
        manifest: Path,
        paths: Sequence[Path],
        rows: Sequence[int],
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
        self.manifest = manifest
        self.paths = list(paths)
        self.rows = list(rows)

    def _decode(self, index: int) -> Sample:
        context = f"{self.manifest}, row {self.rows[index]}"
        return load_rgb(self.paths[index], self.transform, context=context), {}


def _read_manifest(path: Path) -> tuple[list[str], list[_Row]]:
    if not path.is_file():
        raise DataError(f"CSV manifest {path} does not exist (data.root + data.manifest)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _parse_manifest(path, csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable UTF-8 CSV file: {exc}") from exc


def _parse_manifest(path: Path, reader: Any) -> tuple[list[str], list[_Row]]:
    header = [name.strip() for name in next(reader, [])]
    if not header:
        raise DataError(f"{path}, row 1: the manifest is empty; expected a header row")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}, row 1: repeated column(s) {repeated}")
    if IMAGE_COLUMN not in header:
        raise DataError(f"{path}, row 1: no {IMAGE_COLUMN!r} column; columns: {header}")
    rows = []
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            raise DataError(
                f"{path}, row {reader.line_num}: expected {len(header)} fields, got {len(fields)}"
            )
        values = {name: value.strip() for name, value in zip(header, fields, strict=True)}
        rows.append(_Row(reader.line_num, values))
    if not rows:
        raise DataError(f"{path}: the manifest has a header but no rows")
    return header, rows


class _Manifest:
    """A parsed manifest with the helpers that turn its rows into arrays or errors."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder
        self.header, self.rows = _read_manifest(path)

    def error(self, row: _Row, message: str) -> DataError:
        image = row.values.get(IMAGE_COLUMN) or "<no image>"
        return DataError(f"{self.path}, row {row.number} ({self.folder / image}): {message}")

    def require_column(self, column: str, purpose: str) -> None:
        if column not in self.header:
            raise DataError(
                f"{self.path}, row 1: no column {column!r} ({purpose}); columns: {self.header}"
            )

    def image_paths(self) -> list[Path]:
        seen: dict[str, int] = {}
        paths = []
        for row in self.rows:
            name = row.values[IMAGE_COLUMN]
            if not name:
                raise self.error(row, f"the {IMAGE_COLUMN!r} column is empty")
            if name in seen:
                raise self.error(row, f"image {name!r} is listed twice (first at row {seen[name]})")
            seen[name] = row.number
            path = self.folder / name
            if not path.is_file():
                raise self.error(row, f"image file {path} does not exist")
            paths.append(path)
        return paths

    def column_values(self, column: str) -> list[str]:
        for row in self.rows:
            if not row.values[column]:
                raise self.error(row, f"column {column!r} is empty")
        return [row.values[column] for row in self.rows]


def _binary_targets(manifest: _Manifest, column: str) -> np.ndarray:
    values = manifest.column_values(column)
    out = np.zeros(len(values), dtype=np.int64)
    for i, (row, value) in enumerate(zip(manifest.rows, values, strict=True)):
        parsed = parse_binary(value)
        if parsed is None:
            raise manifest.error(
                row,
                f"column {column!r} value {value!r} is not a binary label; "
                "expected 0/1, true/false, yes/no or 1/-1",
            )
        out[i] = parsed
    return out


def _multiclass_targets(manifest: _Manifest, spec: LabelSpec) -> tuple[np.ndarray, int, list[str]]:
    values = manifest.column_values(spec.column)
    if all(_INTEGER.fullmatch(v) for v in values):
        ids = np.array([int(float(v)) for v in values], dtype=np.int64)
        classes = spec.num_classes or int(ids.max()) + 1
        for row, class_id in zip(manifest.rows, ids, strict=True):
            if not 0 <= class_id < classes:
                raise manifest.error(
                    row,
                    f"column {spec.column!r} value {class_id} is out of range; "
                    f"expected 0..{classes - 1} (or class names)",
                )
        return ids, classes, [str(k) for k in range(classes)]
    vocabulary = sorted(set(values))
    lookup = {name: k for k, name in enumerate(vocabulary)}
    return np.array([lookup[v] for v in values], dtype=np.int64), len(vocabulary), vocabulary


def _manifest_split(manifest: _Manifest, data: DataConfig, strata: np.ndarray, seed: int) -> Split:
    if SPLIT_COLUMN in manifest.header:
        codes = np.zeros(len(manifest.rows), dtype=np.int64)
        for i, row in enumerate(manifest.rows):
            value = row.values[SPLIT_COLUMN].lower()
            if value not in SPLITS:
                raise manifest.error(
                    row,
                    f"split {row.values[SPLIT_COLUMN]!r} is invalid; expected train, val or test",
                )
            codes[i] = SPLITS.index(value)
        if not np.any(codes == 0):
            raise DataError(f"{manifest.path}: the {SPLIT_COLUMN!r} column has no 'train' rows")
        return split_from_codes(codes)
    if data.split_by is not None:
        manifest.require_column(data.split_by, "data.split_by")
        groups = np.array(manifest.column_values(data.split_by))
        return group_split(groups, data.val_fraction, data.test_fraction, seed)
    return stratified_split(strata, data.val_fraction, data.test_fraction, seed)


def _check_kinds(labels: Sequence[LabelSpec], manifest: _Manifest) -> None:
    for spec in labels:
        if spec.kind not in ("binary", "multiclass"):
            raise ConfigError(
                f"label {spec.name!r} asks for column {spec.column!r} as kind {spec.kind!r}, "
                "which dataset 'csv' cannot provide; it offers binary or multiclass columns: "
                + ", ".join(c for c in manifest.header if c not in (IMAGE_COLUMN, SPLIT_COLUMN))
            )
        manifest.require_column(spec.column, f"label {spec.name!r}")


@register_dataset("csv")
def build_csv(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """Read and check ``root/manifest`` eagerly; images are decoded on first access."""
    chosen = root if root is not None else data.root
    if chosen is None:
        raise DataError("dataset 'csv' needs data.root: the folder holding the images and manifest")
    folder = Path(chosen).expanduser().absolute()
    if not folder.is_dir():
        raise DataError(f"dataset 'csv': data folder {folder} does not exist; set data.root")
    manifest = _Manifest(folder / data.manifest, folder)
    _check_kinds(labels, manifest)
    paths = manifest.image_paths()
    targets: dict[str, np.ndarray] = {}
    classes: dict[str, int] = {}
    class_names: dict[str, list[str]] = {}
    for spec in labels:
        if spec.kind == "binary":
            targets[spec.name], classes[spec.name] = _binary_targets(manifest, spec.column), 2
        else:
            targets[spec.name], classes[spec.name], class_names[spec.name] = _multiclass_targets(
                manifest, spec
            )
    strata = targets[labels[0].name] if labels else np.zeros(len(paths), dtype=np.int64)
    split = _manifest_split(manifest, data, strata, seed)
    transform = ImageTransform(data.image_size)
    datasets = []
    for split_name, indices in zip(
        SPLITS, apply_caps(split, data.max_train, data.max_eval, seed), strict=True
    ):
        dataset = CsvDataset(
            manifest=manifest.path,
            paths=[paths[i] for i in indices],
            rows=[manifest.rows[i].number for i in indices],
            item_ids=[manifest.rows[i].values[IMAGE_COLUMN] for i in indices],
            labels=labels,
            targets={name: values[indices] for name, values in targets.items()},
            transform=transform,
            cache=data.cache,
            description=f"csv {split_name}",
        )
        dataset.class_names = dict(class_names)
        datasets.append(dataset)
    return assemble_splits(datasets, labels, classes, transform)
