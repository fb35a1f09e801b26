"""NYUv2 and Cityscapes in the preprocessed ``.npy`` layout of MTAN / KD-MTL.

These are the standard multi-task dense benchmarks; users who have them in
that layout get segmentation, depth and (NYUv2) surface normals::

    root/{train,val}/image/{index}.npy   H×W×3 float in [0, 1]
    root/{train,val}/label/{index}.npy   H×W float class ids, -1 = ignore
    root/{train,val}/depth/{index}.npy   H×W×1 float, 0 = invalid
    root/{train,val}/normal/{index}.npy  H×W×3 float in [-1, 1]   (NYUv2 only)

Columns: ``seg`` (NYUv2 13 classes, Cityscapes 7), ``depth`` and, for NYUv2,
``normals``. The layout has no test split: ``val/`` is used as the test split
and the validation split is carved from ``train/`` (``data.val_fraction``,
seeded); ``test_fraction`` does not apply.

Images are quantised to 8 bits and resized bilinearly like any photo (see
:class:`~metamorphosis.data.transforms.ImageTransform`); label, depth and normal
maps are resized with nearest neighbour so that invalid pixels never blend
into valid ones, and normals are re-normalised to unit length. Files are read
with ``allow_pickle=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import DataConfig, LabelSpec
from ..errors import DataError
from .base import (
    IGNORE_INDEX,
    Column,
    DatasetSplits,
    LabelledImageDataset,
    Sample,
    assemble_splits,
    check_split_by,
    match_columns,
    require_file,
    resize_nearest,
    resolve_root,
)
from .registry import register_dataset
from .splits import apply_caps, stratified_split
from .transforms import ImageTransform

__all__ = ["NpyDataset", "build_nyuv2", "build_cityscapes", "NYUV2_CLASSES", "CITYSCAPES_CLASSES"]

NYUV2_CLASSES = 13
CITYSCAPES_CLASSES = 7
_FOLDERS = {"seg": "label", "depth": "depth", "normals": "normal"}


def _load_npy(path: Path) -> np.ndarray:
    """A numeric array from a ``.npy`` file (never unpickled); anything else is a DataError."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        reason = " ".join(str(exc).split()) or "empty or truncated file"
        raise DataError(f"cannot read {path}: {reason}") from None
    if not isinstance(array, np.ndarray):  # np.load gives an NpzFile for a .npz archive
        raise DataError(f"{path} is not a .npy array file (an .npz archive?)")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path} holds dtype {array.dtype}; expected numbers")
    return array


class NpyDataset(LabelledImageDataset):
    """One split of an MTAN-style ``.npy`` dataset; maps are read and resized on access."""

    def __init__(
        self,
        *,
        files: Sequence[tuple[Path, str]],
        columns: dict[str, Column],
        num_seg_classes: int,
        labels: Sequence[LabelSpec],
        transform: ImageTransform,
        cache: bool,
        description: str,
    ) -> None:
        super().__init__(
            item_ids=[f"{split_dir.name}/{stem}" for split_dir, stem in files],
            labels=labels,
            transform=transform,
            cache=cache,
            description=description,
        )
        self.files = list(files)
        self._columns = {name: column.name for name, column in columns.items()}
        self._num_seg_classes = num_seg_classes

    def path(self, index: int, folder: str) -> Path:
        split_dir, stem = self.files[index]
        return split_dir / folder / f"{stem}.npy"

    def _decode(self, index: int) -> Sample:
        image_path = self.path(index, "image")
        try:
            image = self.transform.resize_array(_load_npy(image_path))
        except DataError as exc:
            raise DataError(f"{image_path}: {exc}") from None
        dense = {name: self._read_map(index, column) for name, column in self._columns.items()}
        return image, dense

    def _read_map(self, index: int, column: str) -> np.ndarray:
        path = self.path(index, _FOLDERS[column])
        raw = _load_npy(path)
        size = self.transform.image_size
        if column == "seg":
            return _segmentation(path, raw, size, self._num_seg_classes)
        if column == "depth":
            return _depth(path, raw, size)
        return _normals(path, raw, size)


def _plane(path: Path, raw: np.ndarray, channels: int) -> np.ndarray:
    array = np.asarray(raw, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] == 1 and channels == 1:
        array = array[:, :, 0]
    expected = 2 if channels == 1 else 3
    if array.ndim != expected or (channels > 1 and array.shape[2] != channels):
        want = "H×W" if channels == 1 else f"H×W×{channels}"
        raise DataError(f"{path} has shape {raw.shape}; expected {want}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{path} holds NaN or infinite values")
    return array


def _segmentation(path: Path, raw: np.ndarray, size: tuple[int, int], classes: int) -> np.ndarray:
    seg = np.rint(_plane(path, raw, 1)).astype(np.int16)
    seg[seg < 0] = IGNORE_INDEX
    if seg.max(initial=0) >= classes:
        raise DataError(f"{path} holds class {seg.max()}; expected -1 (ignore) or 0–{classes - 1}")
    return resize_nearest(seg, size)


def _depth(path: Path, raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    depth = _plane(path, raw, 1)
    depth = np.where(depth > 0, depth, 0.0).astype(np.float32)
    return np.ascontiguousarray(resize_nearest(depth, size))


def _normals(path: Path, raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    normals = resize_nearest(_plane(path, raw, 3), size)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    valid = length > 1e-3
    return np.where(valid, normals / np.where(valid, length, 1.0), 0.0).astype(np.float32)


def _indices(split_dir: Path) -> list[str]:
    """File stems of ``split_dir/image``, in numeric order where they are numbers."""
    folder = split_dir / "image"
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist; expected the MTAN .npy layout")
    stems = [p.stem for p in folder.glob("*.npy")]
    if not stems:
        raise DataError(f"folder {folder} holds no .npy images")
    return sorted(stems, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


def _build_npy(
    name: str,
    data: DataConfig,
    labels: Sequence[LabelSpec],
    seed: int,
    root: str | Path | None,
    offered: Sequence[Column],
) -> DatasetSplits:
    folder = resolve_root(data, root, name)
    check_split_by(data, ())
    columns = match_columns(name, labels, offered)
    seg_classes = next(c.num_classes for c in offered if c.name == "seg") or 0
    train_dir, val_dir = folder / "train", folder / "val"
    train_stems, test_stems = _indices(train_dir), _indices(val_dir)
    carved = stratified_split(np.zeros(len(train_stems)), data.val_fraction, 0.0, seed)
    split = (carved[0], carved[1], np.arange(len(test_stems)))
    dirs = (train_dir, train_dir, val_dir)
    stems = (train_stems, train_stems, test_stems)
    transform = ImageTransform(data.image_size)
    datasets = []
    for split_name, split_dir, names, indices in zip(
        ("train", "val", "test"),
        dirs,
        stems,
        apply_caps(split, data.max_train, data.max_eval, seed),
        strict=True,
    ):
        files = [(split_dir, names[i]) for i in indices]
        for split_dir_, stem in files:
            for column in {"image", *(_FOLDERS[c.name] for c in columns.values())}:
                require_file(split_dir_ / column / f"{stem}.npy", f"{name} {column} file")
        datasets.append(
            NpyDataset(
                files=files,
                columns=columns,
                num_seg_classes=seg_classes,
                labels=labels,
                transform=transform,
                cache=data.cache,
                description=f"{name} {split_name}",
            )
        )
    classes = {spec: column.num_classes or 0 for spec, column in columns.items()}
    return assemble_splits(datasets, labels, classes, transform)


@register_dataset("nyuv2")
def build_nyuv2(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """NYUv2 (13 classes, depth, normals) from ``$METAMORPHOSIS_DATA/nyuv2`` by default."""
    offered = (
        Column("seg", ("segmentation",), NYUV2_CLASSES),
        Column("depth", ("depth",)),
        Column("normals", ("normals",)),
    )
    return _build_npy("nyuv2", data, labels, seed, root, offered)


@register_dataset("cityscapes")
def build_cityscapes(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """Cityscapes (7 classes, depth) from ``$METAMORPHOSIS_DATA/cityscapes`` by default."""
    offered = (
        Column("seg", ("segmentation",), CITYSCAPES_CLASSES),
        Column("depth", ("depth",)),
    )
    return _build_npy("cityscapes", data, labels, seed, root, offered)
