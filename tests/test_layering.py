"""Who imports whom: reading a run dir must not pull in the trainer or Opacus, and the
service's key store and the audit's report write files without importing training code."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import {module}
loaded = sorted(m for m in sys.modules if m.startswith("metamorphosis.train") or m == "opacus")
print(",".join(loaded))
"""


@pytest.mark.parametrize(
    "module",
    ["metamorphosis.rundir", "metamorphosis.serve.keys", "metamorphosis.io"],
)
def test_module_loads_without_the_trainer_or_opacus(module):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"


def test_the_probe_sees_the_trainer_when_it_is_imported():
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module="metamorphosis.train.loop")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "metamorphosis.train.loop" in done.stdout and "opacus" in done.stdout
