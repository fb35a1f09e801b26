"""Atomic files and strict JSON, shared by training, the audit and the service.

Every file is written to a temporary name in the same directory, flushed to
disk and then renamed over the target, so a kill at any moment leaves either
the old file or the new one, never half of one. A kill can leave the
temporary behind; :func:`remove_stale_temporaries` clears them. JSON is
strict: a NaN or infinity is refused (:func:`write_json`) or written as
``null`` (:func:`json_safe`), never as the ``NaN`` other readers reject.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .errors import RunDirError

__all__ = [
    "atomic_write",
    "remove_stale_temporaries",
    "json_safe",
    "write_json",
    "save_safetensors",
]

_TMP_PREFIX = "."
_TMP_SUFFIX = ".tmp"
_TMP_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part: 8 of "a-z0-9_"


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
