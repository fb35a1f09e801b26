"""The registry of training methods: ``method:`` in a config names one of these."""

from __future__ import annotations

from typing import cast

from ...registry import Registry
from .base import Method

__all__ = ["METHODS", "method_class"]

#: Method classes by name; a method file registers its class with ``@METHODS.register``.
METHODS: Registry[Method] = Registry("training method", key="method")


def method_class(name: str) -> type[Method]:
    """The class registered as ``name`` (an unknown name lists the registered ones)."""
    return cast(type[Method], METHODS.get(name))
