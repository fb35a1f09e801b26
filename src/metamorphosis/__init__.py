"""metamorphosis: privacy-cognizant, task-specific features (MetaMorphosis, IoTDI 2023).

A producer runs a shared encoder and one metamorphosis module per task; each
consumer receives only its task's features. See ``README.md`` for the CLI and
``DESIGN.md`` for the contracts.
"""

from __future__ import annotations

from .config import Config, LabelSpec, load_config
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MetaMorphosisError,
    PrivacyError,
    RunDirError,
)
from .models.producer import Producer
from .rundir import load_heads, load_producer

__all__ = [
    "Config",
    "LabelSpec",
    "load_config",
    "Producer",
    "load_producer",
    "load_heads",
    "train_run",
    "run_audit",
    "MetaMorphosisError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RunDirError",
    "PrivacyError",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # Load heavy parts only when asked for: the audit pulls in matplotlib and scikit-learn,
    # the trainer Opacus; load_producer (a consumer of a run dir) needs neither.
    if name == "run_audit":
        from .audit.run import run_audit

        return run_audit
    if name == "train_run":
        from .experiment import train_run

        return train_run
    raise AttributeError(f"module 'metamorphosis' has no attribute {name!r}")
