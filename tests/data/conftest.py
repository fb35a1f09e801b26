"""Fixtures shared by the data tests: where the real data lives, tiny image files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def shared_data_base() -> Path:
    """``$METAMORPHOSIS_DATA``, else ``<repo>/../shared/data`` (the project's checkout)."""
    env = os.environ.get("METAMORPHOSIS_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def real_data_root() -> Callable[[str], Path]:
    """``real_data_root("celeba")`` -> the folder, or skip the test when it is absent."""

    def resolve(name: str) -> Path:
        folder = shared_data_base() / name
        if not folder.is_dir():
            pytest.skip(f"real data {name!r} not found at {folder}; set $METAMORPHOSIS_DATA")
        return folder

    return resolve


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """Write a small RGB image with a fixed seeded pattern; returns its path."""

    def write(path: Path, *, size: tuple[int, int] = (10, 8), seed: int = 0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        return path

    return write
