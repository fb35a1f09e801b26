"""Training checkpoints: written atomically, read back without executing anything.

Checkpoints are read back with ``torch.load(weights_only=True)``: they hold
tensors, numbers, strings and containers only, never pickled objects. A file
that cannot be used is one :class:`CheckpointError` line saying why.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (torch >= 1.6)
_RESTART = "delete it to restart training from scratch"


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
