"""Shared test settings.

Tests run tiny models, where OpenMP threads cost more than they give (two
threads on a loaded two-core machine turn milliseconds into seconds), so
every test runs with one intra-op thread.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
