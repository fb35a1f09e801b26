"""Training methods, one file each, registered by name in :data:`METHODS`.

``method:`` in a config picks one; :func:`resolve_method` builds it (checking
its options section and its rules) and the trainer drives it through the
:class:`~.base.Method` interface. A new method is one new file: subclass
:class:`Method`, decorate it with ``@METHODS.register("name")``, import it
here (or anywhere before the config is trained).
"""

from __future__ import annotations

from ...config import CORE_KEYS, Config
from ...errors import ConfigError
from . import (  # noqa: F401  (registration)
    censor,
    deepobfuscator,
    kd_mtl,
    metamorphosis,
    nopeek,
    universal,
)
from .base import Method, MethodContext, NoOptions, PhasePlan, StepInputs, TrainingState
from .registry import METHODS, method_class

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "NoOptions",
    "PhasePlan",
    "StepInputs",
    "TrainingState",
    "method_class",
    "resolve_method",
]


def resolve_method(config: Config) -> Method:
    """The method ``config.method`` names, built from its options section and checked.

    Raises:
        ConfigError: an unknown method (the message lists the registered ones), a
            top-level section that is no registered method's, bad options, or a
            config the method cannot train.
    """
    chosen = method_class(config.method)
    by_section = {method_class(name).section(): method_class(name) for name in METHODS.names()}
    unknown = sorted(set(config.method_options) - set(by_section))
    if unknown:
        allowed = sorted({*CORE_KEYS, *by_section})
        raise ConfigError(f"unknown section(s): {unknown}; allowed: {allowed}")
    for section, raw in config.method_options.items():  # a typo is an error whoever reads it
        by_section[section].build_options(raw)
    return chosen(config)
