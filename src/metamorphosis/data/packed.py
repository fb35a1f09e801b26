"""A packed dataset: decoded once, then read at random from memory-mapped arrays.

DP-SGD's accountant assumes Poisson sampling, so any item may be drawn at any
step: a sequential streaming format (tar shards) does not fit, and re-decoding
JPEGs every epoch dominates a small model's step. ``metamorphosis pack CONFIG
--out DIR`` (:func:`pack_dataset`) decodes and resizes the configured dataset
once into, per split,

* ``{split}.images.npy``: ``uint8`` ``N×H×W×3`` (the resized picture, as every
  dataset's cache holds it);
* ``{split}.{label}.npy``: each label's values (classification labels as ``int64``
  ``N``; dense maps ``N×H×W`` / ``N×H×W×3`` in the dataset's own dtype);
* ``{split}.ids.json``: the item ids, in order;

and ``manifest.json``: the format version, the source ``data`` config and seed
the splits came from, the image size and transform, each label's kind and classes,
and every array's shape, dtype, byte size and SHA-256.

``data: {name: packed, root: DIR}`` reads it. Arrays are opened with
``np.load(mmap_mode="r")`` (never unpickled) lazily in each process, so every
rank and DataLoader worker shares one copy through the page cache instead of
holding its own decoded cache. Opening checks the manifest against the config
(image size, labels), each file's size against its header (a truncated copy) and
its SHA-256 (about 2 s per GB on one core), so a bad or stale pack is one
:class:`~metamorphosis.errors.DataError` naming the file, not wrong training data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import DataConfig, LabelSpec
from ..errors import ConfigError, DataError
from .base import (
    Column,
    DatasetSplits,
    LabelledImageDataset,
    Sample,
    assemble_splits,
    check_split_by,
    match_columns,
)
from .registry import build_datasets, register_dataset
from .splits import apply_caps
from .transforms import ImageTransform

__all__ = ["MANIFEST", "PACK_FORMAT", "PackedDataset", "build_packed", "pack_dataset"]

MANIFEST = "manifest.json"
PACK_FORMAT = {"format": "metamorphosis-pack", "version": 1}
SPLITS = ("train", "val", "test")
_CLASSIFICATION = ("binary", "multiclass")
_CHUNK = 1 << 22  # bytes hashed per read


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _array_record(path: Path, array: np.ndarray) -> dict[str, Any]:
    return {
        "file": path.name,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
    }


# -- packing ------------------------------------------------------------------------------


def pack_dataset(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    out: str | os.PathLike[str],
    *,
    seed: int,
    root: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Decode ``data``'s splits into a pack at ``out`` (which must not exist yet).

    Written into a temporary folder beside ``out`` and renamed into place when
    complete, so a killed pack leaves no pack that looks whole.

    Raises:
        ConfigError: ``data`` is already a pack, or ``out`` exists.
    """
    if data.name == "packed":
        raise ConfigError("data.name is 'packed' already: pack the dataset it was packed from")
    out = Path(out).absolute()
    if out.exists():
        raise ConfigError(f"--out {out} exists: packs are written once; choose a new folder")
    splits = build_datasets(data, labels, seed=seed, root=root)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        manifest: dict[str, Any] = {
            **PACK_FORMAT,
            "source": {"data": _data_dict(data), "seed": seed},
            "image_size": list(data.image_size),
            "transform": splits.transform.to_dict(),
            "labels": _label_columns(labels, splits.num_classes),
            "splits": {},
        }
        for name in SPLITS:
            manifest["splits"][name] = _pack_split(
                getattr(splits, name), labels, scratch, name, progress, manifest["labels"]
            )
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _label_columns(labels: Sequence[LabelSpec], classes: dict[str, int]) -> dict[str, Any]:
    """The packed labels, keyed by the source *column*, so that the same config reads the
    pack with only ``data.name`` and ``data.root`` changed; file names are numbered
    (a CSV column may hold any character)."""
    columns: dict[str, Any] = {}
    for spec in labels:
        kind = spec.kind if spec.kind not in _CLASSIFICATION else "classification"
        known = columns.get(spec.column)
        if known is not None and known["kind"] != kind:
            raise ConfigError(
                f"labels read column {spec.column!r} both as {known['kind']} and as {kind}: "
                "pack with one of them"
            )
        if known is None:
            file_key = f"label{len(columns)}"
            columns[spec.column] = {"kind": kind, "num_classes": classes.get(spec.name)}
            columns[spec.column]["file"] = file_key
    return columns


def _data_dict(data: DataConfig) -> dict[str, Any]:
    import dataclasses

    raw = dataclasses.asdict(data)
    raw["image_size"] = list(data.image_size)
    return raw


def _pack_split(
    dataset: LabelledImageDataset,
    labels: Sequence[LabelSpec],
    folder: Path,
    split: str,
    progress: bool,
    columns: dict[str, Any],
) -> dict[str, Any]:
    count = len(dataset)
    height, width = dataset.transform.image_size
    images_path = folder / f"{split}.images.npy"
    images = np.lib.format.open_memmap(
        images_path, mode="w+", dtype=np.uint8, shape=(count, height, width, 3)
    )
    first: dict[str, LabelSpec] = {}  # column -> the first label that reads it
    for spec in labels:
        first.setdefault(spec.column, spec)
    path_of = {column: folder / f"{split}.{info['file']}.npy" for column, info in columns.items()}
    dense: dict[str, np.memmap] = {}
    for index in tqdm(range(count), desc=f"packing {split}", disable=not progress or count < 2):
        image, maps = dataset.decode(index)
        images[index] = image
        for column, spec in first.items():
            if spec.name not in maps:
                continue  # a classification label: its targets are known up front
            values = maps[spec.name]
            if column not in dense:  # the first item gives the map's shape and dtype
                dense[column] = np.lib.format.open_memmap(
                    path_of[column], mode="w+", dtype=values.dtype, shape=(count, *values.shape)
                )
            dense[column][index] = values
    images.flush()
    del images
    record: dict[str, Any] = {"count": count, "labels": {}}
    record["images"] = _array_record(images_path, np.load(images_path, mmap_mode="r"))
    for column, spec in first.items():
        path = path_of[column]
        if spec.kind in _CLASSIFICATION:
            np.save(path, dataset.class_targets(spec.name), allow_pickle=False)
        elif column in dense:
            dense.pop(column).flush()
        else:  # an empty split has no first item to size the map
            np.save(path, np.zeros((0,), dtype=np.float32), allow_pickle=False)
        record["labels"][column] = _array_record(path, np.load(path, mmap_mode="r"))
    ids_path = folder / f"{split}.ids.json"
    ids_path.write_text(json.dumps(dataset.item_ids))
    record["ids"] = {"file": ids_path.name, "sha256": _sha256(ids_path)}
    return record


# -- reading ------------------------------------------------------------------------------


class PackedDataset(LabelledImageDataset):
    """One split of a pack; its arrays are memory-mapped on first access, per process."""

    decodes_files = False  # no progress bar: nothing is decoded

    def __init__(
        self,
        *,
        folder: Path,
        record: dict[str, Any],
        item_ids: Sequence[str],
        labels: Sequence[LabelSpec],
        dense: Sequence[str],
        targets: dict[str, np.ndarray],
        transform: ImageTransform,
        indices: np.ndarray,
        description: str,
    ) -> None:
        # cache=False: the page cache is the cache, shared by every process
        super().__init__(
            item_ids=item_ids,
            labels=labels,
            transform=transform,
            cache=False,
            description=description,
            targets=targets,
        )
        self._folder = folder
        self._record = record
        self._dense = tuple(dense)
        self._indices = indices  # positions in the packed split (max_train / max_eval)
        self._arrays: dict[str, np.ndarray] | None = None

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {"": _map(self._folder, self._record["images"])}
            for name in self._dense:
                arrays[name] = _map(self._folder, self._record["labels"][name])
            self._arrays = arrays
        return self._arrays

    def _decode(self, index: int) -> Sample:
        arrays = self._open()
        row = int(self._indices[index])
        image = np.array(arrays[""][row])  # a copy: never hand out a view of the file
        return image, {name: np.array(arrays[name][row]) for name in self._dense}

    def __getstate__(self) -> dict[str, Any]:
        # A spawned DataLoader worker or rank maps the files itself; pickling the
        # memmap would copy the whole array into the message.
        state = super().__getstate__()
        state["_arrays"] = None
        return state


def _map(folder: Path, record: dict[str, Any]) -> np.ndarray:
    path = folder / record["file"]
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"packed array {path} cannot be read: {exc}") from None
    if list(array.shape) != record["shape"] or array.dtype.str != record["dtype"]:
        raise DataError(
            f"packed array {path} holds {array.dtype.str} {list(array.shape)}, the manifest "
            f"says {record['dtype']} {record['shape']}: the pack was modified"
        )
    return array


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{folder} is not a pack (no {MANIFEST}): make one with "
            "`metamorphosis pack CONFIG --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in PACK_FORMAT.items()):
        raise DataError(f"{path} is not a version-1 metamorphosis pack manifest")
    for key in ("image_size", "transform", "labels", "splits"):
        if key not in manifest:
            raise DataError(f"{path} has no {key!r}")
    return manifest


def _verify(folder: Path, record: dict[str, Any], what: str) -> None:
    """Size first (a truncated copy, at once), then the checksum."""
    path = folder / record["file"]
    if not path.is_file():
        raise DataError(f"{what} {path} is missing from the pack")
    size = path.stat().st_size
    if "bytes" in record and size != record["bytes"]:
        raise DataError(
            f"{what} {path} has {size} bytes, the manifest says {record['bytes']}: "
            "truncated or modified; pack again"
        )
    if _sha256(path) != record["sha256"]:
        raise DataError(f"{what} {path} fails its SHA-256 check: corrupt or modified; pack again")


def _check_config(data: DataConfig, manifest: dict[str, Any], folder: Path) -> None:
    packed_size = tuple(manifest["image_size"])
    if tuple(data.image_size) != packed_size:
        raise ConfigError(
            f"data.image_size {list(data.image_size)} differs from the pack's "
            f"{list(packed_size)} ({folder}): pack again at this size, or set it to match"
        )
    check_split_by(data, ())


def _offered(column: str, info: dict[str, Any]) -> Column:
    """A packed column, readable as the kinds its values allow (as in its source)."""
    classes = info.get("num_classes")
    if info["kind"] != "classification":
        return Column(column, (info["kind"],), classes)
    kinds = ("binary", "multiclass") if classes == 2 else ("multiclass",)
    return Column(column, kinds, classes)


@register_dataset("packed")
def build_packed(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """The splits of the pack at ``root`` / ``data.root``; ``max_train`` / ``max_eval``
    take seeded subsets of the packed splits, as for any dataset."""
    chosen = root if root is not None else data.root
    if chosen is None:
        raise ConfigError("data.name 'packed' needs data.root: the folder `pack --out` wrote")
    folder = Path(chosen).expanduser().absolute()
    manifest = _read_manifest(folder)
    _check_config(data, manifest, folder)
    offered = [_offered(column, info) for column, info in manifest["labels"].items()]
    columns = match_columns("packed", labels, offered)
    transform = ImageTransform.from_dict(manifest["transform"])
    records = [manifest["splits"][name] for name in SPLITS]
    train, val, test = (np.arange(int(record["count"])) for record in records)
    classes: dict[str, int] = {}
    capped = apply_caps((train, val, test), data.max_train, data.max_eval, seed)
    datasets = [
        _open_split(folder, name, record, labels, columns, transform, indices)
        for name, record, indices in zip(SPLITS, records, capped, strict=True)
    ]
    for spec in labels:
        number = manifest["labels"][columns[spec.name].name].get("num_classes")
        if number is not None:
            classes[spec.name] = int(number)
    return assemble_splits(datasets, labels, classes, transform)


def _open_split(
    folder: Path,
    split: str,
    record: dict[str, Any],
    labels: Sequence[LabelSpec],
    columns: dict[str, Column],
    transform: ImageTransform,
    indices: np.ndarray,
) -> PackedDataset:
    _verify(folder, record["images"], f"packed {split} images")
    _verify(folder, record["ids"], f"packed {split} ids")
    ids = json.loads((folder / record["ids"]["file"]).read_text(encoding="utf-8"))
    targets: dict[str, np.ndarray] = {}
    dense: list[str] = []
    label_records: dict[str, Any] = {}
    for spec in labels:
        column = columns[spec.name].name
        label_record = record["labels"][column]
        _verify(folder, label_record, f"packed {split} label {column!r}")
        label_records[spec.name] = label_record
        if spec.kind in _CLASSIFICATION:
            targets[spec.name] = np.asarray(_map(folder, label_record))[indices]
        else:
            dense.append(spec.name)
    return PackedDataset(
        folder=folder,
        record={"images": record["images"], "labels": label_records},
        item_ids=[ids[i] for i in indices],
        labels=labels,
        dense=dense,
        targets=targets,
        transform=transform,
        indices=indices,
        description=f"packed {split}",
    )
