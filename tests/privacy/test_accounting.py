"""ε of composed DP phases, and noise calibration, against Opacus directly."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from metamorphosis.errors import PrivacyError
from metamorphosis.privacy.accounting import (
    DPPhase,
    epsilon_of_phases,
    noise_for_target_epsilon,
)


def test_prv_is_tighter_than_rdp_as_measured_in_design():
    phases = [DPPhase("joint", 1.0, 64 / 160_000, 25_000)]
    prv = epsilon_of_phases(phases, delta=1e-6, accountant="prv")
    rdp = epsilon_of_phases(phases, delta=1e-6, accountant="rdp")
    assert prv == pytest.approx(0.344, abs=0.01)
    assert rdp == pytest.approx(0.785, abs=0.01)


def test_two_phases_compose_like_opacus_history():
    phases = [DPPhase("encoder", 1.1, 0.01, 300), DPPhase("modules", 1.1, 0.01, 500)]
    ours = epsilon_of_phases(phases, delta=1e-5, accountant="rdp")
    accountant = RDPAccountant()
    for _ in range(800):
        accountant.step(noise_multiplier=1.1, sample_rate=0.01)
    assert ours == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    single = epsilon_of_phases(phases[:1], delta=1e-5, accountant="rdp")
    assert single < ours


def test_no_dp_steps_means_no_epsilon():
    assert epsilon_of_phases([], delta=1e-5, accountant="prv") is None


def test_calibrated_noise_meets_the_target():
    sigma = noise_for_target_epsilon(
        target_epsilon=4.0, delta=1e-5, sample_rate=0.02, steps=400, accountant="prv"
    )
    accountant = PRVAccountant()
    accountant.history = [(sigma, 0.02, 400)]
    assert accountant.get_epsilon(1e-5) <= 4.0 + 0.05


def test_calibration_needs_steps():
    with pytest.raises(PrivacyError, match="no DP steps"):
        noise_for_target_epsilon(
            target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=0, accountant="rdp"
        )
