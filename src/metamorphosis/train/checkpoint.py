"""Atomic files: checkpoints, JSON and safetensors.

Every file is written to a temporary name in the same directory, flushed to
disk and then renamed over the target, so a kill at any moment leaves either
the old file or the new one, never half of one. A kill can leave the
temporary behind; :func:`remove_stale_temporaries` clears them when training
starts again. Checkpoints are read back with ``torch.load(weights_only=True)``:
they hold tensors, numbers, strings and containers only, never pickled objects.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError, RunDirError

__all__ = [
    "atomic_write",
    "write_json",
    "json_safe",
    "save_safetensors",
    "save_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
_TMP_PREFIX = "."
_TMP_SUFFIX = ".tmp"
_TMP_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part: 8 of "a-z0-9_"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (torch >= 1.6)
_RESTART = "delete it to restart training from scratch"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{_TMP_PREFIX}{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Delete what killed :func:`atomic_write` calls left for ``names`` in ``folder``.

    Only ``.{name}.XXXXXXXX.tmp`` files of the given names match, so another
    writer's temporaries in the same folder (e.g. ``keys.json``) are never touched.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    patterns = [
        re.compile(re.escape(f"{_TMP_PREFIX}{name}.") + _TMP_RANDOM + re.escape(_TMP_SUFFIX))
        for name in names
    ]
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if any(p.fullmatch(path.name) for p in patterns) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _first_non_finite(data: Any, where: str = "") -> str | None:
    """The key path (``metrics.smile.accuracy``) of the first NaN / infinite float."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "<top level>"
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(data, Mapping):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or ±inf float replaced by ``None``, for strict JSON.

    ``null`` in ``run.json`` and ``report.json`` numbers means "not finite / not
    measured" (e.g. a PSNR of a perfect reconstruction, a metric on an empty class).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write ``data`` as indented, strict JSON.

    Raises:
        RunDirError: a value is NaN or infinite, which strict JSON cannot hold
            (Python would write ``NaN``, which other readers reject).
    """
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError:
        where = _first_non_finite(data)
        raise RunDirError(
            f"cannot write {path}: the value at {where} is not finite (NaN or infinity); "
            "JSON files of a run hold finite numbers only"
        ) from None

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)


def save_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically write contiguous CPU copies of ``tensors`` as safetensors."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=dict(metadata or {})))


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Atomically save a training checkpoint (tensors and plain data only)."""
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def _unreadable(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot read checkpoint {path}: {reason}; {_RESTART}")


def _check_archive(path: Path) -> None:
    """Name what is wrong with the file before torch does, in one line.

    torch's own messages run to several lines and advise ``weights_only=False``,
    which would execute whatever the file holds: never repeat them.
    """
    if not path.is_file():
        raise _unreadable(path, "not a regular file")
    with path.open("rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if not head:
        raise _unreadable(path, "empty file")
    if head != _ZIP_MAGIC:
        raise _unreadable(path, "not a torch checkpoint (no zip archive header)")
    if not zipfile.is_zipfile(path):
        raise _unreadable(path, "truncated or corrupt (the zip archive has no end record)")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (no code execution).

    Raises:
        CheckpointError: one line saying why the file cannot be used (empty,
            not a torch checkpoint, truncated, holding objects that are never
            unpickled, or not a metamorphosis checkpoint).
    """
    path = Path(path)
    try:
        _check_archive(path)
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise _unreadable(path, exc.strerror or type(exc).__name__) from None
    except Exception as exc:  # torch raises anything on a damaged archive
        raise _unreadable(path, _torch_reason(exc)) from None
    if not isinstance(state, dict) or "phase" not in state:
        raise _unreadable(path, "not a metamorphosis checkpoint (no training state in it)")
    return state


def _torch_reason(exc: Exception) -> str:
    if "Weights only load failed" in str(exc) or "Unpickl" in type(exc).__name__:
        return "it holds pickled objects other than tensors and plain data, which are never loaded"
    return "corrupt torch archive (truncated or damaged)"
