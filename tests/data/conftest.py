"""Fixtures shared by the data tests: tiny image files (real data: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


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
