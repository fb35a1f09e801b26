"""The producer service without a transport: sources, authorisation, features.

Everything the HTTP adapter (:mod:`.app`) does is decided here, so the rules
are testable without a server:

* a consumer key is bound to one task; a key for another task gets
  :class:`Forbidden` whether or not the asked-for task exists, so task names
  cannot be probed;
* the producer holds the inputs (a dataset split or an image folder) and
  consumers name items by id; they never upload images;
* features leave only as safetensors bodies (:mod:`.codec`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..data import UnknownItemError
from ..errors import DataError, MetaMorphosisError
from ..models.producer import Producer
from .codec import COMPRESSIONS, ENCODINGS, MEDIA_TYPE, encode_tensors
from .keys import KeyRecord, KeyStore, parse_bearer

__all__ = [
    "DatasetSource",
    "FeatureSource",
    "FolderSource",
    "Forbidden",
    "ProducerService",
    "RequestError",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class Forbidden(MetaMorphosisError):
    """A valid key asked for a task it is not bound to (or for no such task)."""


class RequestError(MetaMorphosisError):
    """A well-authorised request with bad parameters (ids, limits, encodings)."""


class FeatureSource(Protocol):
    """The producer's own inputs, addressed by stable string ids."""

    def ids(self) -> list[str]: ...

    def images(self, ids: Sequence[str]) -> Tensor:
        """Preprocessed N×C×H×W images; :class:`UnknownItemError` for an unknown id."""
        ...


class DatasetSource:
    """A dataset split (``serve RUN_DIR`` serves the run's test split)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def ids(self) -> list[str]:
        return list(self.dataset.item_ids)

    def images(self, ids: Sequence[str]) -> Tensor:
        return torch.stack([self.dataset.get_item_by_id(i)[0] for i in ids])


class FolderSource:
    """Every image file under a folder; ids are paths relative to it (sorted)."""

    def __init__(self, folder: str | Path, preprocess) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"--source {folder} is not a folder")
        files = sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise DataError(f"--source {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self._paths = {p.relative_to(self.folder).as_posix(): p for p in files}
        self._preprocess = preprocess

    def ids(self) -> list[str]:
        return list(self._paths)

    def images(self, ids: Sequence[str]) -> Tensor:
        return torch.stack([self._load(i) for i in ids])

    def _load(self, item_id: str) -> Tensor:
        path = self._paths.get(item_id)
        if path is None:
            raise UnknownItemError(f"no item {item_id!r} in {self.folder}")
        try:
            with Image.open(path) as image:
                return self._preprocess(image)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc


class ProducerService:
    """Per-task features of the producer's inputs, for consumers holding that task's key.

    Args:
        producer: the trained producer (eval mode; public tasks only are served).
        source: the producer's inputs.
        keys: the run's consumer key store.
        max_ids: most items per feature request (bounds memory and latency).
    """

    def __init__(
        self, producer: Producer, source: FeatureSource, keys: KeyStore, *, max_ids: int = 256
    ) -> None:
        self.producer = producer.eval()
        self.source = source
        self.keys = keys
        self.max_ids = max_ids
        self._ids = source.ids()
        with torch.no_grad():
            probe = self.producer(torch.zeros(1, *producer.input_shape))
        self.feature_shapes = {task: list(f.shape[1:]) for task, f in probe.items()}

    @property
    def tasks(self) -> list[str]:
        return list(self.producer.tasks)

    def authorize(self, authorization: str | None, task: str) -> KeyRecord:
        """The key record behind ``Authorization: Bearer …`` if it may read ``task``.

        Raises:
            AuthError: missing, malformed, unknown, expired or revoked key (401).
            Forbidden: the key belongs to another task, or ``task`` does not
                exist (403; the same answer either way).
        """
        record = self.keys.authenticate(parse_bearer(authorization))
        if record.task != task or task not in self.producer.tasks:
            raise Forbidden("this key does not grant access to this task")
        return record

    def schema(self, task: str) -> dict[str, Any]:
        return {
            "task": task,
            "shape": self.feature_shapes[task],
            "dtype": "float32",
            "media_type": MEDIA_TYPE,
            "encodings": list(ENCODINGS),
            "compressions": list(COMPRESSIONS),
            "max_ids": self.max_ids,
            "items": len(self._ids),
        }

    def item_ids(self, offset: int, limit: int) -> dict[str, Any]:
        if offset < 0 or not 1 <= limit <= 10_000:
            raise RequestError("offset must be >= 0 and limit in [1, 10000]")
        return {"ids": self._ids[offset : offset + limit], "total": len(self._ids)}

    def features(
        self, task: str, ids: Sequence[str], *, encoding: str = "float32", compression: str = "none"
    ) -> bytes:
        """Safetensors body with ``features`` (N×C×H×W) and the ids in its metadata."""
        if not ids:
            raise RequestError("ids must name at least one item")
        if len(ids) > self.max_ids:
            raise RequestError(f"at most {self.max_ids} ids per request, got {len(ids)}")
        with torch.no_grad():
            features = self.producer.features(self.source.images(ids), task=task)
        return encode_tensors(
            {"features": features},
            encoding=encoding,
            compression=compression,
            metadata={"ids": json.dumps(list(ids)), "task": task},
        )
