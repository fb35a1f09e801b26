"""The Fisher-information bound: exact where it must be, unbiased where it is estimated."""

from __future__ import annotations

import math

import pytest
import torch

from metamorphosis.privacy.fisher import (
    calibrate_sigma,
    calibrate_sigmas,
    measure_sensitivity,
    psnr_cap,
    total_dfil,
)

D = 48  # input values per "image": 3×4×4
M = 64  # code values


def _orthogonal(scale: float) -> torch.Tensor:
    """An M×D matrix with AᵀA = scale·I."""
    q, _ = torch.linalg.qr(torch.randn(M, D, generator=torch.Generator().manual_seed(0)))
    return q * math.sqrt(scale)


def _linear(a: torch.Tensor):
    return lambda pixels: (pixels.flatten(1) @ a.T, None)


def test_least_squares_attains_the_bound_for_a_scaled_orthogonal_encoder():
    c, sigma = 4.0, 0.5
    a = _orthogonal(c)
    pixels = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    stats = measure_sensitivity(_linear(a), pixels, probes=4).stats(sigma)
    dfil = c / sigma**2  # Tr(AᵀA) / (σ² d) = c·d / (σ² d)
    # Rademacher probes make Hutchinson exact here: vᵀAᵀAv = c·‖v‖² = c·d
    assert torch.allclose(stats.per_image, torch.full((8,), dfil, dtype=torch.float64))
    assert float(stats.stderr.max()) < 1e-6 * dfil  # float32 rounding only
    # the least-squares estimator over many noise draws: MSE per value → 1/dFIL
    draws = 4000
    x = pixels.flatten(1)[0].double()
    noise = torch.randn(draws, M, generator=torch.Generator().manual_seed(2)).double()
    z = x @ a.double().T + sigma * noise
    estimate = z @ a.double() / c  # (AᵀA)⁻¹Aᵀz
    mse = float(((estimate - x) ** 2).mean())
    # MSE·d/(σ²/c) is χ² with draws·d degrees of freedom: relative sd sqrt(2 / (draws·d))
    assert abs(mse * dfil - 1) < 4 * math.sqrt(2 / (draws * D)), (mse, 1 / dfil)
    assert psnr_cap(dfil) == pytest.approx(10 * math.log10(16.0))


def test_hutchinson_estimate_of_a_general_jacobian_lies_within_its_stated_error():
    a = torch.randn(M, D, generator=torch.Generator().manual_seed(3))
    pixels = torch.rand(1, 3, 4, 4)
    stats = measure_sensitivity(_linear(a), pixels, probes=400, seed=4).stats(1.0)
    exact = float((a * a).sum()) / D
    error = float(stats.stderr[0])
    assert 0 < error < 0.2 * exact  # a real spread, stated
    assert abs(float(stats.per_image[0]) - exact) < 4 * error


def test_learnt_variance_adds_its_own_term_and_sigma_calibration_meets_the_target():
    # z = a·x + s(x)·ε with log s² = b·x: I = a²/s² + ½ (∂s²)²/s⁴ = a²/s² + b²/2 per value
    def release(pixels):
        flat = pixels.flatten(1)
        return 2.0 * flat, 0.3 * flat

    pixels = torch.full((1, 1, 1, 1), 0.5)
    stats = measure_sensitivity(release, pixels, probes=2).stats(0.0)
    posterior = math.exp(0.15)
    assert float(stats.per_image[0]) == pytest.approx(4 / posterior + 0.09 / 2)
    sens = measure_sensitivity(release, torch.rand(32, 1, 2, 2), probes=4)
    sigma = calibrate_sigma(sens, 1.0)
    assert sigma > 0
    p95 = float(torch.quantile(sens.dfil(sigma), 0.95))
    assert p95 == pytest.approx(1.0, rel=1e-6)


def test_fixed_noise_calibration_is_closed_form_and_the_total_respects_its_maximum():
    a = _orthogonal(4.0)
    sens = measure_sensitivity(_linear(a), torch.rand(16, 3, 4, 4), probes=2)
    assert calibrate_sigma(sens, 1.0) == pytest.approx(2.0)  # c/σ² = 1
    both = {"one": sens, "two": sens}
    sigmas = calibrate_sigmas(both, None, 3.0)
    assert float(torch.quantile(total_dfil(both, sigmas), 0.95)) <= 3.0 * (1 + 1e-9)


def test_a_release_without_noise_has_no_bound():
    sens = measure_sensitivity(_linear(_orthogonal(1.0)), torch.rand(2, 3, 4, 4), probes=1)
    with pytest.raises(ValueError, match="unbounded"):
        sens.dfil(0.0)
