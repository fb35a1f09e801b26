"""The Fisher-information bound where it is exact, in numbers (the test's setting).

    python benchmarks/fisher_exactness.py

A linear encoder f(x) = Ax with AᵀA = c·I (a scaled orthogonal A, 48 input values, 64
code values) and release noise N(0, σ²I): dFIL = Tr(AᵀA) / (σ² d) = c / σ², and the
least-squares estimator (AᵀA)⁻¹Aᵀz attains the Cramér–Rao bound, so its MSE per value
times dFIL is 1 up to sampling error. Prints the Hutchinson estimate against the exact
value, that product with its sampling sd, and, for a general A (where Hutchinson is only
unbiased), the estimate ± its stated standard error against the exact trace.
(``tests/privacy/test_fisher.py`` asserts the same.)
"""

from __future__ import annotations

import math

import torch

from metamorphosis.privacy.fisher import measure_sensitivity, psnr_cap

D, M = 48, 64  # input values per "image" (3×4×4), code values


def _linear(a: torch.Tensor):
    return lambda pixels: (pixels.flatten(1) @ a.T, None)


def scaled_orthogonal(c: float = 4.0, sigma: float = 0.5, draws: int = 4000) -> None:
    q, _ = torch.linalg.qr(torch.randn(M, D, generator=torch.Generator().manual_seed(0)))
    a = q * math.sqrt(c)
    pixels = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    stats = measure_sensitivity(_linear(a), pixels, probes=4).stats(sigma)
    dfil = c / sigma**2
    print(f"scaled orthogonal A (c = {c}, sigma = {sigma}): exact dFIL {dfil:.7f}")
    print(
        f"  Hutchinson (4 Rademacher probes, 8 images): {float(stats.per_image.mean()):.7f}, "
        f"largest stated standard error {float(stats.stderr.max()):.1e}"
    )
    x = pixels.flatten(1)[0].double()
    noise = torch.randn(draws, M, generator=torch.Generator().manual_seed(2)).double()
    estimate = (x @ a.double().T + sigma * noise) @ a.double() / c  # (AᵀA)⁻¹Aᵀz
    mse = float(((estimate - x) ** 2).mean())
    sd = math.sqrt(2 / (draws * D))  # MSE·d·c/σ² is χ² with draws·d degrees of freedom
    print(
        f"  least squares over {draws} noise draws: MSE {mse:.6f} against 1/dFIL "
        f"{1 / dfil:.6f}; MSE·dFIL = {mse * dfil:.5f} (sampling sd {sd:.4f})"
    )
    print(f"  PSNR cap 10·log10(dFIL) = {psnr_cap(dfil):.3f} dB")


def general(probes: int = 400) -> None:
    a = torch.randn(M, D, generator=torch.Generator().manual_seed(3))
    pixels = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    stats = measure_sensitivity(_linear(a), pixels, probes=probes, seed=4).stats(1.0)
    exact = float((a * a).sum()) / D
    print(
        f"general A (sigma 1, {probes} probes): Hutchinson {float(stats.per_image[0]):.2f} "
        f"± {float(stats.stderr[0]):.2f} (stated standard error) against exact {exact:.2f}"
    )


if __name__ == "__main__":
    scaled_orthogonal()
    general()
