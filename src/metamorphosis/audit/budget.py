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
        epochs: the most passes over its training items a classifier attacker
            makes; with ``patience`` it usually stops earlier.
        reconstruction_epochs: passes for the reconstruction decoder (fixed).
        batch_size: attacker minibatch size.
        lr: Adam learning rate of every attacker.
        tsne_items: test items embedded by t-SNE per feature source.
        decoder_width: channels of the reconstruction decoder's first block.
        restarts: seeded restarts of every trained classifier attacker; the
            report keeps the best (an attacker would keep its best try too).
        patience: a classifier attacker stops after this many epochs without
            improving on its held-out slice and keeps its best epoch's weights
            (``None``: it runs all ``epochs``).
        holdout: share of the attacker's training items held out of its
            training to decide when to stop (0: no held-out slice, which
            needs ``patience=None``).
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
    restarts: int = 2
    patience: int | None = 3
    holdout: float = 0.15

    def __post_init__(self) -> None:
        positive = (
            "epochs",
            "reconstruction_epochs",
            "batch_size",
            "tsne_items",
            "decoder_width",
            "restarts",
        )
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"budget {key}={value!r} is invalid: expected an integer >= 1")
        for key in ("train_items", "test_items"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ConfigError(f"budget {key}={value!r} is invalid: expected None or >= 2")
        if not self.lr > 0:
            raise ConfigError(f"budget lr={self.lr!r} is invalid: expected a number > 0")
        self._check_stopping()

    def _check_stopping(self) -> None:
        patience = self.patience
        if patience is not None and (
            not isinstance(patience, int) or isinstance(patience, bool) or patience < 1
        ):
            raise ConfigError(
                f"budget patience={patience!r} is invalid: expected None or an integer >= 1"
            )
        holdout = self.holdout
        if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
            raise ConfigError(
                f"budget holdout={holdout!r} is invalid: expected a number in [0, 0.5]"
            )
        if not 0 <= holdout <= 0.5:
            raise ConfigError(
                f"budget holdout={holdout!r} is invalid: expected a number in [0, 0.5]"
            )
        if patience is not None and holdout == 0:
            raise ConfigError(
                f"budget patience={patience} needs a held-out slice to stop on, but holdout=0; "
                "set holdout > 0 or patience=None"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BUDGETS = {
    "full": AttackBudget(
        name="full",
        train_items=None,
        test_items=None,
        epochs=100,  # a cap: attackers train to convergence (early stopping) on the whole split
        reconstruction_epochs=15,
        batch_size=64,
        lr=1e-3,
        tsne_items=600,
        restarts=3,
        patience=5,
        holdout=0.1,
    ),
    "quick": AttackBudget(
        name="quick",
        train_items=384,
        test_items=256,
        epochs=4,  # the retrained head dominates the demo's audit time: 2 restarts × ≤ 4 epochs
        reconstruction_epochs=5,
        batch_size=32,
        lr=2e-3,
        tsne_items=150,
        decoder_width=64,
        restarts=2,
        patience=2,
        holdout=0.2,
    ),
}


def budget_named(name: str) -> AttackBudget:
    """The preset ``name`` (``full`` or ``quick``)."""
    if name not in BUDGETS:
        raise ConfigError(f"attack budget {name!r} is unknown: expected one of {sorted(BUDGETS)}")
    return BUDGETS[name]
