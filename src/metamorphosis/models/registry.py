"""A tiny name → builder registry, one per component family.

Encoders and metamorphosis modules are chosen by name in the YAML config, so an
unknown name must fail early with the list of valid names (the style of
opacus' accountant registry and torchvision's ``get_model``), and two builders
must never silently claim the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")
BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to builders of one component family.

    Args:
        family: what the entries are (``"encoder"``, ``"module"``); it appears
            in error messages so the user knows which config key was wrong.
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[BuilderT], BuilderT]:
        """Decorator that registers a builder under ``name``.

        Raises:
            ValueError: ``name`` is already taken (lists the existing names).
        """

        def decorate(builder: BuilderT) -> BuilderT:
            if name in self._builders:
                raise ValueError(
                    f"{self.family} {name!r} is already registered; "
                    f"registered {self.family}s: {', '.join(self.names())}"
                )
            self._builders[name] = builder
            return builder

        return decorate

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered under ``name``.

        Raises:
            ConfigError: unknown name; the message lists the valid ones.
        """
        try:
            return self._builders[name]
        except (KeyError, TypeError):
            valid = ", ".join(repr(n) for n in self.names())
            raise ConfigError(f"unknown {self.family} {name!r}: expected one of {valid}") from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the entry ``name`` with keyword arguments ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._builders

    def __len__(self) -> int:
        return len(self._builders)

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, names={self.names()})"
