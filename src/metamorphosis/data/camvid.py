"""CamVid road scenes (SegNet tutorial layout): semantic segmentation and boundaries.

Files read from the dataset folder (default ``$METAMORPHOSIS_DATA/camvid``):
``{train,val,test}.txt`` with ``image_path label_path`` per line (relative to
the folder), RGB frames and 8-bit label maps with classes 0–10 and 11 = void.

Columns (both ``segmentation``):

* ``seg``: 11 classes; void becomes :data:`~metamorphosis.data.base.IGNORE_INDEX`;
* ``boundary``: 2 classes, a semantic boundary map derived from the resized
  labels — a pixel is 1 when any 4-neighbour has a different valid class, 0
  otherwise; void stays ignored. A second dense task on the same images, so
  task-privacy between two segmentation tasks can be studied without depth.

Images are resized bilinearly and labels with nearest neighbour to
``data.image_size``; the official split files fix the split.
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
    decode_image,
    listed_file,
    load_rgb,
    match_columns,
    read_text,
    resize_nearest,
    resolve_root,
)
from .registry import register_dataset
from .splits import apply_caps
from .transforms import ImageTransform

__all__ = ["CLASSES", "VOID", "CamVidDataset", "boundary_map", "build_camvid"]

CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
VOID = 11
COLUMNS = (
    Column("seg", ("segmentation",), len(CLASSES)),
    Column("boundary", ("segmentation",), 2),
)


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """1 where a 4-neighbour holds a different valid class, 0 elsewhere, void kept void."""
    valid = seg != IGNORE_INDEX
    edge = np.zeros(seg.shape, dtype=bool)
    pairs = (
        (np.s_[1:, :], np.s_[:-1, :]),  # neighbour above / below
        (np.s_[:, 1:], np.s_[:, :-1]),  # neighbour left / right
    )
    for a, b in pairs:
        differ = valid[a] & valid[b] & (seg[a] != seg[b])
        edge[a] |= differ
        edge[b] |= differ
    out = edge.astype(np.int16)
    out[~valid] = IGNORE_INDEX
    return out


class CamVidDataset(LabelledImageDataset):
    """One split; decodes an image and its label map, resized, on first access."""

    def __init__(
        self,
        *,
        pairs: Sequence[tuple[Path, Path]],
        item_ids: Sequence[str],
        columns: dict[str, Column],
        labels: Sequence[LabelSpec],
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
        )
        self.pairs = list(pairs)
        self._columns = {name: column.name for name, column in columns.items()}
        names = {"seg": list(CLASSES), "boundary": ["interior", "boundary"]}
        self.class_names = {name: names[col] for name, col in self._columns.items()}

    def _decode(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = load_rgb(image_path, self.transform)
        dense: dict[str, np.ndarray] = {}
        if self._columns:
            seg = _read_label(label_path, self.transform.image_size)
            maps = {"seg": seg}
            if "boundary" in self._columns.values():
                maps["boundary"] = boundary_map(seg)
            dense = {name: maps[col] for name, col in self._columns.items()}
        return image, dense


def _read_label(path: Path, size: tuple[int, int]) -> np.ndarray:
    raw = decode_image(path, np.array, what="CamVid label map")
    if raw.ndim != 2:
        raise DataError(f"CamVid label map {path} has shape {raw.shape}; expected H×W class ids")
    if raw.max(initial=0) > VOID:
        raise DataError(f"CamVid label map {path} holds class {raw.max()}; expected 0–{VOID}")
    seg = resize_nearest(raw, size).astype(np.int16)
    seg[seg == VOID] = IGNORE_INDEX
    return seg


def _read_split_file(folder: Path, split: str) -> list[tuple[str, str]]:
    path = folder / f"{split}.txt"
    pairs = []
    for line_no, line in enumerate(read_text(path, "CamVid split file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path} line {line_no}: expected 'image_path label_path'")
        pairs.append((fields[0], fields[1]))
    return pairs


@register_dataset("camvid")
def build_camvid(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """The official train / val / test lists, capped by max_train / max_eval."""
    folder = resolve_root(data, root, "camvid")
    check_split_by(data, ())
    columns = match_columns("camvid", labels, COLUMNS)
    listed = [_read_split_file(folder, split) for split in ("train", "val", "test")]
    train, val, test = (np.arange(len(pairs)) for pairs in listed)
    capped = apply_caps((train, val, test), data.max_train, data.max_eval, seed)
    transform = ImageTransform(data.image_size)
    datasets = []
    for split_name, pairs, indices in zip(("train", "val", "test"), listed, capped, strict=True):
        chosen = [pairs[i] for i in indices]
        listed_in = str(folder / f"{split_name}.txt")
        paths = [
            (
                listed_file(folder, image, "CamVid image", listed_in),
                listed_file(folder, label, "CamVid label map", listed_in),
            )
            for image, label in chosen
        ]
        datasets.append(
            CamVidDataset(
                pairs=paths,
                item_ids=[image for image, _ in chosen],
                columns=columns,
                labels=labels,
                transform=transform,
                cache=data.cache,
                description=f"camvid {split_name}",
            )
        )
    classes = {name: column.num_classes or 0 for name, column in columns.items()}
    return assemble_splits(datasets, labels, classes, transform)
