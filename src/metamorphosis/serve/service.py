"""The producer service without a transport: sources, authorisation, features.

Everything the HTTP adapter (:mod:`.app`) does is decided here, so the rules
are testable without a server:

* a consumer key is bound to one task; a key for another task gets
  :class:`Forbidden` whether or not the asked-for task exists, so task names
  cannot be probed;
* the producer holds the inputs (a dataset split or an image folder) and
  consumers name items by id; they never upload images;
* features leave only as safetensors bodies (:mod:`.codec`);
* what each task's privacy numbers cover (``run.json``'s ``privacy`` and
  ``release``) is read once, when the service is built.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..data import ImageTransform, UnknownItemError
from ..data.base import decode_image
from ..errors import DataError, MetaMorphosisError, RunDirError
from ..io import json_safe
from ..models.producer import Producer
from ..privacy.fisher import has_bound
from ..privacy.scope import privacy_scope
from ..rundir import RUN_JSON
from .codec import COMPRESSIONS, ENCODINGS, MEDIA_TYPE, encode_tensors
from .keys import KeyRecord, KeyStore, parse_bearer

__all__ = [
    "DatasetSource",
    "FeatureSource",
    "FolderSource",
    "Forbidden",
    "NoPrivacyRecord",
    "ProducerService",
    "RequestError",
    "UnreadableItem",
    "VideoSource",
    "authorize",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class Forbidden(MetaMorphosisError):
    """A valid key asked for a task it is not bound to (or for no such task)."""


class NoPrivacyRecord(MetaMorphosisError):
    """The service was built without a run record, so it has no privacy numbers (404)."""


class RequestError(MetaMorphosisError):
    """A well-authorised request with bad parameters (ids, limits, encodings)."""


class UnreadableItem(DataError):
    """An item the producer holds but cannot decode (a corrupt or truncated image).

    The producer's data is at fault, not the request, so it is answered 500. The
    message names only the item id (it reaches the consumer); :attr:`cause`, with
    the file's path, is for the server's log.
    """

    def __init__(self, item_id: str, cause: str) -> None:
        super().__init__(f"cannot read item {item_id!r}")
        self.item_id = item_id
        self.cause = cause


class FeatureSource(Protocol):
    """The producer's own inputs, addressed by stable string ids."""

    def ids(self) -> list[str]: ...

    def images(self, ids: Sequence[str]) -> Tensor:
        """Preprocessed N×C×H×W images.

        Raises:
            UnknownItemError: an id the source does not hold.
            UnreadableItem: an item whose image cannot be decoded.
        """
        ...


class DatasetSource:
    """A dataset split (``serve RUN_DIR`` serves the run's test split)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def ids(self) -> list[str]:
        return list(self.dataset.item_ids)

    def images(self, ids: Sequence[str]) -> Tensor:
        return torch.stack([self._load(i) for i in ids])

    def _load(self, item_id: str) -> Tensor:
        try:
            return self.dataset.get_item_by_id(item_id)[0]
        except UnknownItemError:
            raise
        except DataError as exc:  # the split's image file is corrupt or gone
            raise UnreadableItem(item_id, str(exc)) from exc


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
            raise UnknownItemError(f"no item {item_id!r} in the served folder")  # no path leak
        try:  # decode_image: every decoding failure (bombs, truncation) as one DataError
            return decode_image(path, self._preprocess)
        except DataError as exc:
            raise UnreadableItem(item_id, str(exc)) from exc


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def _decode_video(
    path: Path, max_frames: int, convert: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray]:
    """``convert`` of each of the first ``max_frames`` RGB frames of the first video stream.

    Each frame is converted (resized) as it is decoded: full-size frames of a
    long video would not fit in memory.
    """
    try:
        import av  # the 'serve' extra; only needed for video sources
    except ImportError as exc:
        raise MetaMorphosisError(
            f"--source {path}: reading video needs PyAV: pip install -e '.[serve]'"
        ) from exc
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:  # PyAV raises IndexError for decode(video=0)
                raise DataError(f"--source {path} holds no video stream")
            for frame in container.decode(video=0):
                if len(frames) >= max_frames:
                    break
                frames.append(convert(frame.to_ndarray(format="rgb24")))
    except (av.error.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise DataError(
            f"--source {path}: cannot decode the video ({reason}); expected a video file "
            f"FFmpeg reads ({', '.join(VIDEO_SUFFIXES)})"
        ) from exc
    return frames


class VideoSource:
    """The frames of a video file, decoded once at start; ids are ``frame-000000`` …

    Frames are kept resized to the producer's input size as ``uint8`` (a few
    KB each), so ``max_frames`` bounds the memory; the producer's own
    transform normalises them per request, exactly as in training.
    """

    def __init__(self, path: str | Path, transform: ImageTransform, *, max_frames: int = 10_000):
        self.path = Path(path)
        self._transform = transform
        frames = _decode_video(self.path, max_frames, transform.resize_array)
        self._frames = {f"frame-{index:06d}": pixels for index, pixels in enumerate(frames)}
        if not self._frames:
            raise DataError(f"--source {self.path}: the video has no frames")

    def ids(self) -> list[str]:
        return list(self._frames)

    def images(self, ids: Sequence[str]) -> Tensor:
        missing = [i for i in ids if i not in self._frames]
        if missing:
            raise UnknownItemError(f"no frame {missing[0]!r} in {self.path.name}")
        return torch.stack([self._transform.from_array(self._frames[i]) for i in ids])


def authorize(
    keys: KeyStore, tasks: Sequence[str], authorization: str | None, task: str
) -> KeyRecord:
    """The key record behind ``Authorization: Bearer …`` if it may use ``task``.

    Raises:
        AuthError: missing, malformed, unknown, expired or revoked key (401).
        Forbidden: the key belongs to another task, or ``task`` is not one of
            ``tasks`` (403; the same answer either way, so names cannot be probed).
    """
    record = keys.authenticate(parse_bearer(authorization))
    if record.task != task or task not in tasks:
        raise Forbidden("this key does not grant access to this task")
    return record


class ProducerService:
    """Per-task features of the producer's inputs, for consumers holding that task's key.

    Args:
        producer: the trained producer (eval mode; public tasks only are served).
        source: the producer's inputs.
        keys: the run's consumer key store.
        max_ids: most items per feature request (bounds memory and latency).
        run_record: the run's ``run.json`` (for :meth:`privacy`; without it that route
            answers 404). :func:`~.server.build_service` passes the run dir's.
    """

    def __init__(
        self,
        producer: Producer,
        source: FeatureSource,
        keys: KeyStore,
        *,
        max_ids: int = 256,
        run_record: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(max_ids, bool) or not isinstance(max_ids, int) or max_ids < 1:
            raise MetaMorphosisError(f"max_ids={max_ids!r} must be an integer >= 1")
        self.producer = producer.eval()
        self.source = source
        self.keys = keys
        self.max_ids = max_ids
        self._ids = source.ids()
        with torch.no_grad():
            probe = self.producer(torch.zeros(1, *producer.input_shape))
        self.feature_shapes = {task: list(f.shape[1:]) for task, f in probe.items()}
        self._privacy = (
            None if run_record is None else _privacy_answers(run_record, producer, self.tasks)
        )

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
        return authorize(self.keys, self.producer.tasks, authorization, task)

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

    def privacy(self, task: str) -> dict[str, Any]:
        """What ``task``'s released features and the run's ε cover (CONTRACT: producer service).

        Raises:
            NoPrivacyRecord: the service was built without a run record.
        """
        if self._privacy is None:
            raise NoPrivacyRecord("this service has no run record: no privacy numbers")
        answer = self._privacy[task]
        return {**answer, "dfil": copy.deepcopy(answer["dfil"])}

    def item_ids(self, offset: int, limit: int) -> dict[str, Any]:
        if offset < 0 or not 1 <= limit <= 10_000:
            raise RequestError("offset must be >= 0 and limit in [1, 10000]")
        return {"ids": self._ids[offset : offset + limit], "total": len(self._ids)}

    def id_batches(self, batch_size: int) -> list[list[str]]:
        """Every item id in order, ``batch_size`` at a time (the stream's messages)."""
        if not 1 <= batch_size <= self.max_ids:
            raise RequestError(f"batch_size must be in [1, {self.max_ids}], got {batch_size}")
        return [self._ids[i : i + batch_size] for i in range(0, len(self._ids), batch_size)]

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


def _release_entry(record: Mapping[str, Any], task: str) -> Mapping[str, Any]:
    release = record.get("release")
    entry = release.get(task) if isinstance(release, Mapping) else None
    return entry if isinstance(entry, Mapping) else {}


def _sigma(record: Mapping[str, Any], task: str) -> float:
    """``release[task].sigma``; 0.0 (no noise) when the run records no release for ``task``."""
    value = _release_entry(record, task).get("sigma", 0.0)
    try:
        sigma = float(value if value is not None else 0.0)
    except (TypeError, ValueError):
        sigma = math.nan
    if not (math.isfinite(sigma) and sigma >= 0) or isinstance(value, bool):
        raise RunDirError(f"{RUN_JSON}: release.{task}.sigma={value!r} is invalid: expected >= 0")
    return sigma


def _privacy_answers(
    record: Mapping[str, Any], producer: Producer, tasks: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The privacy route's answer per task, from ``run.json`` (and, for whether every
    release is noisy, from the producer that releases: a learnt variance is noise too).

    Older run dirs lack ``privacy.scope``, ``privacy.private_heads`` and
    ``release[task].dfil``: the scope is then built from the run's facts
    (:func:`~..privacy.scope.privacy_scope`) and ``dfil`` is null.
    """
    privacy = record["privacy"]
    epsilon = privacy.get("epsilon")
    private_heads = bool(privacy.get("private_heads", False))
    public = record.get("tasks", tasks)
    sigmas = {task: _sigma(record, task) for task in {*public, *tasks}}
    scope = privacy.get("scope") or privacy_scope(
        dp=epsilon is not None,
        private_heads=private_heads,
        noisy_release=all(has_bound(producer, task) for task in producer.tasks),
    )
    answers = {}
    for task in tasks:
        dfil = _release_entry(record, task).get("dfil")
        answers[task] = json_safe(
            {
                "task": task,
                "epsilon": epsilon,
                "delta": privacy.get("delta"),
                "private_heads": private_heads,
                "scope": str(scope),
                "sigma": sigmas[task],
                "dfil": dict(dfil) if isinstance(dfil, Mapping) else None,
            }
        )
    return answers
