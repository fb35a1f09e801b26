"""A tiny name → builder registry, one per component family.

Encoders, metamorphosis modules and datasets are chosen by name in the YAML
config, so an unknown name must fail early with the list of valid names (the
style of opacus' accountant registry and torchvision's ``get_model``), and two
builders must never silently claim the same name. One class serves every
family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")
BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to builders of one component family.

    Args:
        family: what the entries are (``"encoder"``, ``"module"``); it appears
            in error messages so the user knows which config key was wrong.
        key: the config key that selects an entry (``"data.name"``); when given,
            an unknown name is reported as that key's invalid value.
    """

    def __init__(self, family: str, *, key: str | None = None) -> None:
        self.family = family
        self.key = key
        self._builders: dict[str, Callable[..., T]] = {}

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (tests register throwaways in it)."""
        clone: Registry[T] = Registry(self.family, key=self.key)
        clone._builders = dict(self._builders)
        return clone

    def register(self, name: str) -> Callable[[BuilderT], BuilderT]:
        """Decorator that registers a builder under ``name``.

        Raises:
            ConfigError: ``name`` is empty or already taken (lists the existing names).
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{self.family} name {name!r} is invalid: expected a non-empty string"
            )

        def decorate(builder: BuilderT) -> BuilderT:
            if name in self._builders:
                raise ConfigError(
                    f"{self.family} {name!r} is already registered; "
                    f"registered {self.family}s: {', '.join(self.names())}"
                )
            self._builders[name] = builder
            return builder

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin's tests register throwaway entries and remove them)."""
        self.get(name)  # an unknown name fails as a lookup does
        del self._builders[name]

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered under ``name``.

        Raises:
            ConfigError: unknown name; the message lists the valid ones.
        """
        try:
            return self._builders[name]
        except (KeyError, TypeError):
            if self.key is not None:
                valid = ", ".join(self.names())
                message = f"{self.key}={name!r} is invalid: expected one of {valid}"
            else:
                valid = ", ".join(repr(n) for n in self.names())
                message = f"unknown {self.family} {name!r}: expected one of {valid}"
            raise ConfigError(message) from None

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
