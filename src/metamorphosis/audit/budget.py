"""The fixed training budget every attacker gets, stated in the report.

An attack's result means little without the effort behind it, so the audit
runs every attacker on one declared budget: ``full`` for reported numbers,
``quick`` for tests and the demo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["AttackBudget", "BUDGETS", "budget_named"]


@dataclass(frozen=True)
class AttackBudget:
    """How much data and optimisation each attacker gets.

    Attributes:
        name: the preset's name, as the report states it.
        train_items: attacker training items drawn from the train split
            (``None``: all of it).
        test_items: held-out test items the attacks are scored on (``None``: all).
        epochs: passes over ``train_items`` for each classifier attacker.
        reconstruction_epochs: passes for the reconstruction decoder.
        batch_size: attacker minibatch size.
        lr: Adam learning rate of every attacker.
        tsne_items: test items embedded by t-SNE per feature source.
        decoder_width: channels of the reconstruction decoder's first block.
    """

    name: str
    train_items: int | None
    test_items: int | None
    epochs: int
    reconstruction_epochs: int
    batch_size: int
    lr: float
    tsne_items: int
    decoder_width: int = 128

    def __post_init__(self) -> None:
        for key in ("epochs", "reconstruction_epochs", "batch_size", "tsne_items", "decoder_width"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"budget {key}={value!r} is invalid: expected an integer >= 1")
        for key in ("train_items", "test_items"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ConfigError(f"budget {key}={value!r} is invalid: expected None or >= 2")
        if not self.lr > 0:
            raise ConfigError(f"budget lr={self.lr!r} is invalid: expected a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BUDGETS = {
    "full": AttackBudget(
        name="full",
        train_items=None,
        test_items=None,
        epochs=10,
        reconstruction_epochs=15,
        batch_size=64,
        lr=1e-3,
        tsne_items=600,
    ),
    "quick": AttackBudget(
        name="quick",
        train_items=384,
        test_items=256,
        epochs=4,
        reconstruction_epochs=5,
        batch_size=32,
        lr=2e-3,
        tsne_items=150,
        decoder_width=64,
    ),
}


def budget_named(name: str) -> AttackBudget:
    """The preset ``name`` (``full`` or ``quick``)."""
    if name not in BUDGETS:
        raise ConfigError(f"attack budget {name!r} is unknown: expected one of {sorted(BUDGETS)}")
    return BUDGETS[name]
