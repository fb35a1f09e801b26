from __future__ import annotations

import pytest

from metamorphosis.config import config_from_dict
from tiny import tiny_config_dict


@pytest.fixture
def tiny_config():
    def make(mode="both", privacy=None, **train):
        return config_from_dict(tiny_config_dict(mode, privacy, **train))

    return make
