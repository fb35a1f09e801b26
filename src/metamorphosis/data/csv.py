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
exists inside ``root``, every label value parses), so a bad row fails at once
rather than hours into training; images are decoded lazily. Every error names
the manifest row (the header is row 1; a row with a quoted line break is
numbered by its first line) and the image file.

Image paths are resolved (symlinks included) and must stay inside ``root``:
a manifest from someone else must not make the producer read, train on and
publish features of files elsewhere on its machine (``../secret.jpg``,
``/etc/passwd``). An absolute path inside ``root`` is accepted.
"""

from __future__ import annotations

import csv
import io
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
    decode_utf8,
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
MAX_CLASSES = 100_000
"""Largest integer class count read from a manifest: a typo (``50000000`` for ``5``) must
not build a head with millions of outputs."""


@dataclass(frozen=True)
class _Row:
    number: int  # 1-based, the header is row 1
    values: dict[str, str]


def parse_binary(value: str) -> int | None:
    """0 / 1 for an accepted binary spelling, None otherwise."""
    return _BINARY.get(value.strip().lower())


def _shown(text: str) -> str:
    """Text for a one-line message: quoted with escapes when it holds control characters."""
    return text if text.isprintable() else repr(text)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


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
    if path.is_dir():
        raise DataError(f"CSV manifest {path} is a directory, not a file (data.manifest)")
    if not path.is_file():
        raise DataError(f"CSV manifest {path} does not exist (data.root + data.manifest)")
    # decoded here, not in csv, to know the row of a bad byte
    advice = "save the manifest as UTF-8"
    text = decode_utf8(path.read_bytes(), lambda row: f"{path}, row {row}", advice)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _parse_manifest(path, reader)
    except csv.Error as exc:
        raise DataError(f"{path}, row {reader.line_num}: not valid CSV ({exc})") from None


def _parse_manifest(path: Path, reader: Any) -> tuple[list[str], list[_Row]]:
    header = [name.strip() for name in next(reader, [])]
    if not any(header):
        raise DataError(f"{path}, row 1: the manifest is empty; expected a header row")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}, row 1: repeated column(s) {repeated}")
    if IMAGE_COLUMN not in header:
        raise DataError(f"{path}, row 1: no {IMAGE_COLUMN!r} column; columns: {header}")
    rows = []
    start = reader.line_num + 1
    for fields in reader:
        first, start = start, reader.line_num + 1
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            spans = f" (the row runs to line {reader.line_num}: unclosed quote?)"
            raise DataError(
                f"{path}, row {first}: expected {len(header)} fields, got {len(fields)}"
                + (spans if reader.line_num > first else "")
            )
        values = {name: value.strip() for name, value in zip(header, fields, strict=True)}
        rows.append(_Row(first, values))
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
        shown = _shown(str(self.folder / image))
        return DataError(f"{self.path}, row {row.number} ({shown}): {message}")

    def require_column(self, column: str, purpose: str) -> None:
        if column not in self.header:
            raise DataError(
                f"{self.path}, row 1: no column {column!r} ({purpose}); columns: {self.header}"
            )

    def image_paths(self) -> list[Path]:
        """Every row's image, resolved, inside the root, existing and listed once."""
        root = self.folder.resolve()
        seen: dict[Path, _Row] = {}
        paths = []
        for row in self.rows:
            path = self._image_path(row, root)
            first = seen.setdefault(path, row)
            if first is not row:
                name, first_name = row.values[IMAGE_COLUMN], first.values[IMAGE_COLUMN]
                also = "" if name == first_name else f" as {first_name!r}"
                raise self.error(
                    row, f"image {name!r} is listed twice (first at row {first.number}{also})"
                )
            paths.append(path)
        return paths

    def _image_path(self, row: _Row, root: Path) -> Path:
        name = row.values[IMAGE_COLUMN]
        if not name:
            raise self.error(row, f"the {IMAGE_COLUMN!r} column is empty")
        if not name.isprintable():
            raise self.error(row, f"image path {name!r} holds a control character")
        try:
            path = (self.folder / name).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise self.error(row, f"image path {name!r} cannot be resolved ({exc})") from None
        if not path.is_relative_to(root):
            raise self.error(
                row,
                f"image path {name!r} resolves to {_shown(str(path))}, outside data.root "
                f"{root}; image paths must stay inside data.root",
            )
        if path.is_dir():
            raise self.error(row, f"{_shown(str(path))} is a directory, not an image file")
        if not path.is_file():
            raise self.error(row, f"image file {_shown(str(self.folder / name))} does not exist")
        return path

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


def _class_ids(manifest: _Manifest, spec: LabelSpec, values: list[str]) -> tuple[np.ndarray, int]:
    """Integer class ids, each in ``0..K-1`` (K: ``num_classes``, else the largest + 1)."""
    ids = [int(v.split(".")[0]) for v in values]  # exact, even for huge values
    classes = spec.num_classes or max(ids) + 1
    limit = min(classes, MAX_CLASSES)
    for row, class_id in zip(manifest.rows, ids, strict=True):
        if not 0 <= class_id < limit:
            raise manifest.error(
                row,
                f"column {spec.column!r} value {class_id} is out of range; "
                f"expected 0..{limit - 1} (or class names)",
            )
    return np.array(ids, dtype=np.int64), classes


def _mixed_values(manifest: _Manifest, column: str, values: list[str]) -> DataError:
    """Numbers and other values in one column: a typo (``nan``, ``1.5``) or a wrong column.

    Names the odd number out where there is one (``nan`` among names or ids),
    else the first name among integer ids.
    """
    rows = list(zip(manifest.rows, values, strict=True))
    odd = [(r, v) for r, v in rows if _is_number(v) and not _INTEGER.fullmatch(v)]
    bad_row, bad = (odd or [(r, v) for r, v in rows if not _INTEGER.fullmatch(v)])[0]
    example = next((f"; row {r.number} holds {v!r}" for r, v in rows if _INTEGER.fullmatch(v)), "")
    return manifest.error(
        bad_row,
        f"column {column!r} value {bad!r} is not an integer class id{example}; expected "
        "integer class ids 0..K-1 in every row, or class names in every row",
    )


def _multiclass_targets(manifest: _Manifest, spec: LabelSpec) -> tuple[np.ndarray, int, list[str]]:
    values = manifest.column_values(spec.column)
    if all(_INTEGER.fullmatch(v) for v in values):
        ids, classes = _class_ids(manifest, spec, values)
        return ids, classes, [str(k) for k in range(classes)]
    if any(_is_number(v) for v in values):
        raise _mixed_values(manifest, spec.column, values)
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
