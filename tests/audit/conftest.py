"""A tiny trained run and its quick audit, shared by the audit tests (built once)."""

from __future__ import annotations

import pytest

from metamorphosis.audit.run import run_audit
from metamorphosis.config import config_from_dict
from metamorphosis.experiment import train_run
from tiny import tiny_config_dict


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run dir of the tiny 'both' config (trains in seconds)."""
    out = tmp_path_factory.mktemp("audit") / "run"
    train_run(config_from_dict(tiny_config_dict("both")), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_audit(tiny_run):
    """The quick audit of ``tiny_run`` (report dict), written to ``tiny_run/audit``."""
    return run_audit(tiny_run, budget="quick", device="cpu", progress=False)
