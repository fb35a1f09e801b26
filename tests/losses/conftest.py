"""Shared fixtures for the loss tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread: these tensors are tiny, and on a loaded 2-core
    machine two OpenMP threads waiting on each other made single tests take
    seconds instead of milliseconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
