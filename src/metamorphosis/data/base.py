"""What every dataset shares: the item format, ids, the cache and label checks.

An item is ``(image, labels)``: a float32 ``3×H×W`` tensor made by
:class:`~metamorphosis.data.transforms.ImageTransform` and a ``dict`` keyed by
``LabelSpec.name``. Label tensors by kind:

* ``binary``: float32 scalar 0. / 1. (what ``BCEWithLogits`` wants);
* ``multiclass``: int64 scalar in ``[0, K)``;
* ``segmentation``: int64 ``H×W`` with :data:`IGNORE_INDEX` for void pixels;
* ``depth``: float32 ``1×H×W``, 0 where the depth is unknown;
* ``normals``: float32 ``3×H×W`` unit vectors, all-zero where unknown.

Datasets decode a *sample* — a resized ``uint8`` image plus its dense label
arrays — and, with ``data.cache``, keep it in memory so later epochs skip the
JPEG decoding and resizing that dominate a small model's step time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info
from tqdm.auto import tqdm

from ..config import DATA_ENV_VAR, DataConfig, LabelSpec, data_root_from_env
from ..errors import ConfigError, DataError
from .transforms import ImageTransform

__all__ = [
    "IGNORE_INDEX",
    "DatasetSplits",
    "LabelledImageDataset",
    "UnknownItemError",
    "Column",
    "match_columns",
    "label_class_counts",
    "assemble_splits",
    "resolve_root",
    "check_split_by",
    "require_file",
    "listed_file",
    "label_tensor",
    "load_rgb",
    "decode_image",
    "read_text",
    "decode_utf8",
    "resize_nearest",
]

IGNORE_INDEX = -1
"""Target value of void pixels in segmentation maps (``CrossEntropyLoss(ignore_index=...)``)."""

PROGRESS_THRESHOLD = 500
"""A first pass decoding more files than this shows a progress bar."""

T = TypeVar("T")
Item = tuple[torch.Tensor, dict[str, torch.Tensor]]
Sample = tuple[np.ndarray, dict[str, np.ndarray]]


@dataclass
class DatasetSplits:
    """The three splits of one dataset and what a model needs to know about them.

    Attributes:
        train: training split.
        val: validation split (model selection, early stopping).
        test: held-out split (reported metrics, the split ``serve`` exposes).
        num_classes: label name -> number of classes for binary (2), multiclass
            and segmentation labels; depth and normals labels are absent.
        input_shape: ``(C, H, W)`` of the image tensors.
        transform: the exact preprocessing of a PIL image used for this data.
    """

    train: Dataset[Item]
    val: Dataset[Item]
    test: Dataset[Item]
    num_classes: dict[str, int]
    input_shape: tuple[int, int, int]
    transform: ImageTransform


class UnknownItemError(DataError, KeyError):
    """An item id that the split does not hold; a ``KeyError`` so lookups read naturally."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class LabelledImageDataset(Dataset[Item]):
    """Base of every split: ids, lookup by id, label tensors and the sample cache.

    Subclasses implement :meth:`_decode`, which returns the resized ``uint8``
    image and the dense label arrays of one item (segmentation ``int16 H×W``,
    depth ``float32 H×W``, normals ``float32 H×W×3``, keyed by label name).
    Classification labels known without decoding are passed as ``targets``.

    Attributes:
        item_ids: stable string ids, in item order (file names, manifest paths).
        labels: the label specs of the items' label dicts, in order.
        transform: the preprocessing shared with ``Producer.preprocess``.
        class_names: label name -> class names, where the dataset knows them.
        cache: whether decoded samples stay in memory.
    """

    decodes_files = True

    def __init__(
        self,
        *,
        item_ids: Sequence[str],
        labels: Sequence[LabelSpec],
        transform: ImageTransform,
        cache: bool,
        description: str,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.item_ids = [str(item_id) for item_id in item_ids]
        self._position = {item_id: i for i, item_id in enumerate(self.item_ids)}
        if len(self._position) != len(self.item_ids):
            repeated = sorted({i for i in self.item_ids if self.item_ids.count(i) > 1})[:5]
            raise DataError(f"{description}: item ids must be unique; repeated: {repeated}")
        self.labels = tuple(labels)
        self.transform = transform
        self.cache = cache
        self.description = description
        self.class_names: dict[str, list[str]] = {}
        self._targets = {name: np.asarray(values) for name, values in (targets or {}).items()}
        self._samples: dict[int, Sample] = {}
        self._bar: Any = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, index: int) -> Item:
        index = self._check_index(index)
        image, dense = self._sample(index)
        return self.transform.from_array(image), self._label_tensors(index, dense)

    def get_item_by_id(self, item_id: str) -> Item:
        """The item with this id (the producer service addresses items by id)."""
        return self[self.index_of(item_id)]

    def index_of(self, item_id: str) -> int:
        """Position of an id in this split; :class:`UnknownItemError` when absent."""
        try:
            return self._position[item_id]
        except KeyError:
            raise UnknownItemError(
                f"item id {item_id!r} is not in {self.description} ({len(self)} items)"
            ) from None

    def class_targets(self, name: str) -> np.ndarray:
        """Every item's class id of a binary / multiclass label, in item order.

        Read from the label files without decoding images where the dataset
        can (class balance, stratification checks, attribute-attack baselines);
        the synthetic scenes are rendered (and cached, with ``cache``).
        """
        spec = next((s for s in self.labels if s.name == name), None)
        if spec is None or spec.kind not in ("binary", "multiclass"):
            names = [s.name for s in self.labels if s.kind in ("binary", "multiclass")]
            raise ConfigError(f"label {name!r} is not a classification label here; have {names}")
        if name in self._targets:
            return self._targets[name].astype(np.int64, copy=True)
        return np.array([int(self._sample(i)[1][name]) for i in range(len(self))], dtype=np.int64)

    def decode(self, index: int) -> Sample:
        """The resized ``uint8`` image and dense label arrays of one item, decoded now
        and not cached (what ``metamorphosis pack`` writes)."""
        return self._decode(self._check_index(index))

    def preload(self, *, progress: bool | None = None) -> None:
        """Decode every sample into the cache now (e.g. before forking DataLoader workers).

        Args:
            progress: show a tqdm bar; by default only for more than 500 files.
        """
        missing = [i for i in range(len(self)) if i not in self._samples]
        show = len(missing) > PROGRESS_THRESHOLD and self.decodes_files
        show = show if progress is None else progress
        for index in tqdm(missing, desc=f"decoding {self.description}", disable=not show):
            self._samples[index] = self._decode(index)
        self._close_bar()

    def _check_index(self, index: int) -> int:
        size = len(self)
        position = int(index)
        if position < 0:
            position += size
        if not 0 <= position < size:
            raise IndexError(f"index {index} is out of range for {self.description} of {size}")
        return position

    def _sample(self, index: int) -> Sample:
        if not self.cache:
            return self._decode(index)
        sample = self._samples.get(index)
        if sample is None:
            sample = self._decode(index)
            self._samples[index] = sample
            self._advance_bar()
        return sample

    def _advance_bar(self) -> None:
        """The first, caching pass over a large split shows its progress."""
        if self._bar is None:
            big = len(self) > PROGRESS_THRESHOLD and self.decodes_files
            if not big or get_worker_info() is not None or len(self._samples) > 1:
                return
            self._bar = tqdm(total=len(self), desc=f"caching {self.description}", leave=False)
        self._bar.update(1)
        if len(self._samples) == len(self):
            self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _decode(self, index: int) -> Sample:
        raise NotImplementedError

    def _label_tensors(
        self, index: int, dense: Mapping[str, np.ndarray]
    ) -> dict[str, torch.Tensor]:
        labels: dict[str, torch.Tensor] = {}
        for spec in self.labels:
            if spec.name in self._targets:
                value = self._targets[spec.name][index]
            else:
                value = dense[spec.name]
            labels[spec.name] = label_tensor(spec.kind, value)
        return labels

    def __getstate__(self) -> dict[str, Any]:  # tqdm bars do not pickle (spawned workers)
        state = self.__dict__.copy()
        state["_bar"] = None
        return state


def label_tensor(kind: str, value: Any) -> torch.Tensor:
    """A fresh tensor of the item format for one label value (never a view of the cache)."""
    if kind == "binary":
        return torch.tensor(float(value), dtype=torch.float32)
    if kind == "multiclass":
        return torch.tensor(int(value), dtype=torch.int64)
    array = np.asarray(value)
    if kind == "segmentation":
        return torch.from_numpy(array.astype(np.int64, copy=True))
    if kind == "depth":
        return torch.from_numpy(array.astype(np.float32, copy=True)[None])
    if kind == "normals":
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))
    raise AssertionError(f"unhandled label kind {kind!r}")


@dataclass(frozen=True)
class Column:
    """A label a dataset can provide: the kinds it can be read as and its classes."""

    name: str
    kinds: tuple[str, ...]
    num_classes: int | None = None

    def describe(self) -> str:
        return f"{self.name} ({'|'.join(self.kinds)})"


def match_columns(
    dataset: str,
    labels: Sequence[LabelSpec],
    offered: Sequence[Column],
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Column]:
    """Map every label name to the dataset column it reads, or say what is on offer.

    Raises:
        ConfigError: a label names a column the dataset lacks, or a kind that
            column cannot be read as; the message lists every offered column.
    """
    by_name = {column.name: column for column in offered}
    aliases = aliases or {}
    matched: dict[str, Column] = {}
    for spec in labels:
        column = by_name.get(aliases.get(spec.column, spec.column))
        if column is None or spec.kind not in column.kinds:
            offers = ", ".join(c.describe() for c in offered)
            raise ConfigError(
                f"label {spec.name!r} asks for column {spec.column!r} as kind {spec.kind!r}, "
                f"which dataset {dataset!r} cannot provide; it offers: {offers}"
            )
        matched[spec.name] = column
    return matched


def label_class_counts(labels: Sequence[LabelSpec], classes: Mapping[str, int]) -> dict[str, int]:
    """``DatasetSplits.num_classes``: binary 2, multiclass / segmentation from the data."""
    counts: dict[str, int] = {}
    for spec in labels:
        if spec.kind == "binary":
            counts[spec.name] = 2
        elif spec.kind in ("multiclass", "segmentation"):
            counts[spec.name] = classes[spec.name]
    return counts


def assemble_splits(
    datasets: Sequence[LabelledImageDataset],
    labels: Sequence[LabelSpec],
    classes: Mapping[str, int],
    transform: ImageTransform,
) -> DatasetSplits:
    """The :class:`DatasetSplits` of three split datasets (train, val, test)."""
    train, val, test = datasets
    return DatasetSplits(
        train=train,
        val=val,
        test=test,
        num_classes=label_class_counts(labels, classes),
        input_shape=transform.output_shape,
        transform=transform,
    )


def resolve_root(data: DataConfig, root: str | Path | None, default_folder: str) -> Path:
    """The dataset folder: ``root`` argument, else ``data.root``, else ``$METAMORPHOSIS_DATA``.

    Relative paths are taken against the current working directory and made
    absolute at once, so a later ``chdir`` cannot change which files are read.
    """
    chosen: str | Path | None = root if root is not None else data.root
    if chosen is None:
        chosen = data_root_from_env(default_folder)
    if chosen is None:
        raise DataError(
            f"dataset {data.name!r} has no data folder: set data.root (the {default_folder!r} "
            f"folder) or ${DATA_ENV_VAR} (the folder that holds {default_folder}/)"
        )
    path = Path(chosen).expanduser().absolute()
    if not path.is_dir():
        raise DataError(
            f"dataset {data.name!r}: data folder {path} does not exist; set data.root or "
            f"${DATA_ENV_VAR} (the folder that holds {default_folder}/)"
        )
    return path


def check_split_by(data: DataConfig, allowed: Sequence[str]) -> str | None:
    """Validate ``data.split_by`` against the groupings this dataset knows."""
    if data.split_by is None or data.split_by in allowed:
        return data.split_by
    expected = "one of " + ", ".join(allowed) if allowed else "null (its split is fixed)"
    raise ConfigError(
        f"data.split_by={data.split_by!r} is invalid for dataset {data.name!r}: expected {expected}"
    )


def require_file(path: Path, what: str) -> Path:
    """Fail early, naming the file, rather than deep inside the first epoch."""
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    return path


def listed_file(folder: Path, name: str, what: str, listed_in: str) -> Path:
    """``folder / name`` from an annotation file, refused when the name leaves ``folder``.

    Only ``..`` and absolute names are judged (symlinks are not followed), so a
    dataset folder may link to where its images live, while a doctored list
    cannot make the producer read files elsewhere on its machine.
    """
    path = folder / name
    inside = os.path.normpath(path)
    if not name.isprintable() or not Path(inside).is_relative_to(os.path.normpath(folder)):
        raise DataError(
            f"{listed_in}: {what} path {name!r} points outside the dataset folder {folder}"
        )
    return require_file(path, what)


def decode_image(
    path: Path, use: Callable[[Image.Image], T], *, what: str = "image file", context: str = ""
) -> T:
    """Open and decode an image file, return ``use(image)``; any failure is one DataError line.

    A header claiming more pixels than PIL's ``MAX_IMAGE_PIXELS`` is refused
    before its pixels are allocated (PIL itself only warns up to twice the limit).
    """
    prefix = f"{context}: " if context else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return use(image)
    except FileNotFoundError:
        raise DataError(f"{prefix}{what} {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{prefix}{what} {path} is a directory, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{prefix}{what} {path} is refused as a decompression bomb: {exc}"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # SyntaxError: some PIL plugins
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{prefix}cannot read {what} {path}: {reason}") from None


def load_rgb(path: Path, transform: ImageTransform, *, context: str = "") -> np.ndarray:
    """Decode an image file into the resized ``H×W×3`` uint8 array that datasets cache.

    Raises:
        DataError: the file is missing or not a readable image; the message
            names the file (and ``context``, e.g. the manifest row).
    """
    return decode_image(path, transform.resize, context=context)


def read_text(path: Path, what: str) -> str:
    """A UTF-8 annotation file (a BOM is dropped); a bad byte is reported with its line."""
    raw = require_file(path, what).read_bytes()
    return decode_utf8(raw, lambda line: f"{what} {path} line {line}", "expected a UTF-8 text file")


def decode_utf8(raw: bytes, where: Callable[[int], str], advice: str) -> str:
    """``raw`` as UTF-8 (a BOM dropped), or one DataError naming the first bad byte.

    ``where(line)`` says where it is (a line of an annotation file, a manifest row);
    ``advice`` ends the message.
    """
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        byte = exc.object[exc.start]
        raise DataError(f"{where(line)}: byte 0x{byte:02x} is not UTF-8; {advice}") from None


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (label maps must not blend classes).

    Samples pixel centres like PIL's ``NEAREST``, for any dtype and channel count.
    """
    height, width = array.shape[:2]
    out_h, out_w = size
    if (height, width) == (out_h, out_w):
        return array
    rows = np.minimum(((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64), width - 1)
    return array[rows[:, None], cols[None, :]]
