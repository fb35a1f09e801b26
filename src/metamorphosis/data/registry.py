"""Dataset registry: ``register_dataset`` / ``list_datasets`` / ``build_datasets``.

A dataset is a builder function ``(data, labels, *, seed, root) -> DatasetSplits``
registered under the name that ``data.name`` selects. Builders resolve their
own folder (``root`` argument, ``data.root``, ``$METAMORPHOSIS_DATA/<folder>``)
because only they know their default folder name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ..config import DataConfig, LabelSpec
from ..errors import ConfigError
from ..registry import Registry
from .base import DatasetSplits

__all__ = ["DatasetBuilder", "register_dataset", "list_datasets", "build_datasets"]


class DatasetBuilder(Protocol):
    """Signature of a registered dataset builder."""

    def __call__(
        self,
        data: DataConfig,
        labels: Sequence[LabelSpec],
        *,
        seed: int,
        root: str | Path | None,
    ) -> DatasetSplits: ...


_REGISTRY: Registry[DatasetSplits] = Registry("dataset", key="data.name")


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering a builder under ``name`` (the value of ``data.name``).

    Raises:
        ConfigError: ``name`` is empty or already registered (names must be unique).
    """
    return _REGISTRY.register(name)


def list_datasets() -> list[str]:
    """Names accepted by ``data.name``, sorted."""
    return _REGISTRY.names()


def build_datasets(
    data: DataConfig,
    labels: Sequence[LabelSpec],
    *,
    seed: int,
    root: str | Path | None = None,
) -> DatasetSplits:
    """Build the train / val / test splits that ``data`` describes, with ``labels``.

    Args:
        data: the ``data`` section of the config.
        labels: tasks and private attributes whose labels every item carries.
        seed: makes the split and the ``max_train`` / ``max_eval`` subsets
            (and the synthetic scenes) deterministic.
        root: overrides ``data.root`` (e.g. ``audit --data-root``).

    Raises:
        ConfigError: unknown ``data.name``, or a label the dataset cannot provide.
        DataError: the data folder, a file or a label value is missing or malformed.
    """
    builder = _REGISTRY.get(data.name)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer >= 0")
    return builder(data, tuple(labels), seed=seed, root=root)
