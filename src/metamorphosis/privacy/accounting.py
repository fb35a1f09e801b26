"""Privacy accounting for every DP phase of a producer's training.

A run records each DP phase as ``(noise_multiplier, sample_rate, steps)``;
ε of the whole training is the composition of all of them under one Opacus
accountant. Anyone can recompute the recorded ε from ``run.json`` with
:func:`epsilon_of_phases` (or Opacus directly: the same three numbers go into
``accountant.history``).
"""

from __future__ import annotations

import math
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


_ALPHA_RANGE_CHATTER = "Optimal order is the (largest|smallest) alpha"

#: Largest ε worth accounting. PRV discretises the privacy-loss distribution over a
#: domain that grows with ε: far beyond this it asks for tens of GiB (σ = 0.1, q = 0.004,
#: 25,000 steps: 84.7 GiB), runs for minutes or fails ("Discrete mean differs"), while
#: RDP answers in milliseconds. A guarantee this weak promises nothing anyway.
MAX_ACCOUNTED_EPSILON = 100.0


def epsilon_of_phases(phases: Sequence[DPPhase], *, delta: float, accountant: str) -> float | None:
    """ε of all phases composed, for ``delta``; None when no DP step ran.

    Raises :class:`PrivacyError` when the noise is so small that ε exceeds
    :data:`MAX_ACCOUNTED_EPSILON` (checked first with RDP, an upper bound of
    what PRV reports, so PRV is never asked to account a hopeless budget).
    """
    history = [(p.noise_multiplier, p.sample_rate, p.steps) for p in phases if p.steps > 0]
    if not history:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ALPHA_RANGE_CHATTER)
        rdp = _epsilon("rdp", history, delta)
        _check_accountable(rdp, history, delta)
        return rdp if accountant == "rdp" else _epsilon(accountant, history, delta)


def _epsilon(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    acc = create_accountant(accountant)
    acc.history = list(history)
    try:
        return float(acc.get_epsilon(delta=delta))
    except (RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PrivacyError(
            f"accountant {accountant!r} cannot account {_describe(history)} ({reason}); "
            "raise privacy.noise_multiplier or set privacy.target_epsilon"
        ) from None


def _check_accountable(rdp_epsilon: float, history, delta: float) -> None:
    if math.isfinite(rdp_epsilon) and rdp_epsilon <= MAX_ACCOUNTED_EPSILON:
        return
    raise PrivacyError(
        f"{_describe(history)} gives epsilon {rdp_epsilon:.4g} (RDP, delta={delta}), above "
        f"{MAX_ACCOUNTED_EPSILON:g}: no meaningful guarantee; raise privacy.noise_multiplier "
        "or set privacy.target_epsilon"
    )


def _describe(history: list[tuple[float, float, int]]) -> str:
    return ", ".join(
        f"noise multiplier {s:g} at sample rate {q:.4g} for {n} steps" for s, q, n in history
    )


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
            warnings.filterwarnings("ignore", message=_ALPHA_RANGE_CHATTER)
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
