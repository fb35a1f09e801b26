"""Shared test settings.

Tests run tiny models, where OpenMP threads cost more than they give (two
threads on a loaded two-core machine turn milliseconds into seconds), so
every test runs with one intra-op thread. Real-data tests find the shared
data through :func:`real_data_root` and skip cleanly when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
