"""Privacy accounting for every DP phase of a producer's training.

A run records each DP phase as ``(noise_multiplier, sample_rate, steps)``;
ε of the whole training is the composition of all of them under one Opacus
accountant. Anyone can recompute the recorded ε from ``run.json`` with
:func:`epsilon_of_phases` (or Opacus directly: the same three numbers go into
``accountant.history``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from ..errors import PrivacyError

__all__ = ["DPPhase", "epsilon_of_phases", "noise_for_target_epsilon"]


@dataclass(frozen=True)
class DPPhase:
    """One DP-SGD phase: Poisson sampling at ``sample_rate`` for ``steps`` steps."""

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "name": self.name,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }


def epsilon_of_phases(phases: Sequence[DPPhase], *, delta: float, accountant: str) -> float | None:
    """ε of all phases composed, for ``delta``; None when no DP step ran."""
    history = [(p.noise_multiplier, p.sample_rate, p.steps) for p in phases if p.steps > 0]
    if not history:
        return None
    acc = create_accountant(accountant)
    acc.history = history
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


def noise_for_target_epsilon(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier σ that spends ``target_epsilon`` over ``steps`` steps.

    All DP phases of a run share one sample rate and one σ, so their
    composition is that of ``steps`` = the total number of DP steps.
    """
    if steps <= 0:
        raise PrivacyError("no DP steps are planned: cannot calibrate noise")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        return float(sigma)
    except ValueError as exc:  # Opacus: target unreachable for these settings
        raise PrivacyError(
            f"privacy.target_epsilon={target_epsilon} is unreachable with delta={delta}, "
            f"sample rate {sample_rate:.4g} and {steps} steps: {exc}"
        ) from exc
