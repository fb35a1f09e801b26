"""How well *any* unbiased attacker can rebuild an image from one noisy release: dFIL.

A public task's release is a code ``z = μ(x) + s(x)·ε``, ``ε ~ N(0, I)``, where
``μ`` is the code's mean (after the bottleneck and the eraser), ``s² = e^{log_var(x)}
+ σ²`` (a learnt posterior variance, when the bottleneck has one, plus the release
noise σ) and ``x`` the image as pixels in [0, 1] with ``d`` values. The Fisher
information of ``z`` about ``x`` is, per input direction, that of a Gaussian whose
mean and variance both depend on ``x``::

    I(x) = J_μᵀ S⁻² J_μ + ½ J_{s²}ᵀ S⁻⁴ J_{s²}          (S = diag(s))

and its trace per input value, ``dFIL(x) = Tr I(x) / d``, bounds every unbiased
reconstruction ``x̂`` of ``x`` (the Cramér–Rao bound, as in Maeng et al., "Measuring
and Controlling Split Layer Privacy Leakage Using Fisher Information", 2022):
``E‖x̂ − x‖² / d ≥ 1 / dFIL(x)``, so for pixels in [0, 1] the PSNR of the expected
error is at most ``10·log10 dFIL(x)``. With a fixed σ and no learnt variance this is
``Tr(JᵀJ) / (σ² d)``.

Scope, stated wherever the numbers are: the bound holds for *unbiased* estimators
and for *one* release of an image per task. An attacker with a prior over images
(a decoder trained on similar faces) is biased and can beat it: the audit reports
its decoder's PSNR beside the cap, never one for the other. Releases of one image to
colluding consumers of k tasks add up: their dFIL is the sum (the noise is drawn
independently per task). The released map is a fixed function of the noisy code
(the bottleneck's expansion), so by data processing it carries no more Fisher
information than the code, which is where this module measures it.

**Estimator.** Hutchinson's: for Rademacher probes ``v`` in the input space, every
output value's squared directional derivative ``(J_i v)²`` has expectation
``‖∇_x z_i‖²``, so one forward-mode pass (``torch.func.jvp``) per probe estimates
every row norm of the Jacobian at once, for a whole batch (images do not interact in
eval mode). Weighting those by the noise (above) gives an unbiased estimate of
``Tr I(x)`` for *any* σ from the same passes, which is what calibrating σ to a
target needs. The estimate's standard error is the spread over probes / √probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..models.producer import Producer

__all__ = [
    "DEFAULT_PROBES",
    "QUANTILE",
    "FisherStats",
    "ReleaseFunction",
    "Sensitivity",
    "calibrate_sigma",
    "calibrate_sigmas",
    "dfil_for_psnr_cap",
    "has_bound",
    "measure_sensitivity",
    "producer_release",
    "psnr_cap",
    "release_sigmas",
    "set_release_sigmas",
    "total_stats",
    "total_dfil",
]

DEFAULT_PROBES = 16
#: The quantile of images that a calibrated σ and the reported PSNR cap speak for.
QUANTILE = 0.95

ReleaseFunction = Callable[[Tensor], tuple[Tensor, Tensor | None]]
"""Pixels ``N×C×H×W`` in [0, 1] → the code's mean and log-variance (None: no learnt
variance), both ``N×…``."""


def psnr_cap(dfil: float) -> float:
    """The largest PSNR (dB, pixels in [0, 1]) of an unbiased attacker's expected error."""
    return 10.0 * math.log10(dfil) if dfil > 0 else -math.inf


def dfil_for_psnr_cap(cap_db: float) -> float:
    """The dFIL whose PSNR cap is ``cap_db``."""
    return 10.0 ** (cap_db / 10.0)


@dataclass(frozen=True)
class Sensitivity:
    """Squared directional derivatives of a release at ``N`` images, for ``K`` probes.

    Attributes:
        mean_sq: ``K×N×m`` — ``(J_μ v)²`` per code value (m = 1, summed, when the
            release has no learnt variance: only the total is ever needed then).
        log_var_sq: ``K×N×m`` — ``(J_{log_var} v)²``, or None.
        log_var: ``N×m`` — the code's log-variance at each image, or None.
        values: ``d``, input values per image.
    """

    mean_sq: Tensor
    log_var_sq: Tensor | None
    log_var: Tensor | None
    values: int

    @property
    def probes(self) -> int:
        return int(self.mean_sq.shape[0])

    @property
    def images(self) -> int:
        return int(self.mean_sq.shape[1])

    def per_probe(self, sigma: float) -> Tensor:
        """``K×N``: each probe's estimate of dFIL(x) with release noise ``sigma``."""
        if self.log_var is None:
            if sigma <= 0:
                raise ValueError("a release without noise has unbounded Fisher information")
            return self.mean_sq.sum(dim=-1) / (sigma**2 * self.values)
        assert self.log_var_sq is not None
        posterior = self.log_var.exp()
        variance = posterior + sigma**2  # s², the released code's noise variance
        # ∂s² = e^{log_var} ∂log_var, so the variance term is e^{2 log_var} (∂log_var)² / (2 s⁴)
        weighted = self.mean_sq / variance + self.log_var_sq * posterior**2 / (2 * variance**2)
        return weighted.sum(dim=-1) / self.values

    def dfil(self, sigma: float) -> Tensor:
        """``N``: the estimate of dFIL(x) per image (mean over probes)."""
        return self.per_probe(sigma).mean(dim=0)

    def stats(self, sigma: float) -> FisherStats:
        estimates = self.per_probe(sigma)
        spread = estimates.std(dim=0) if self.probes > 1 else torch.zeros(self.images)
        return FisherStats(
            estimates.mean(dim=0), spread / math.sqrt(self.probes), self.probes, sigma
        )


@dataclass(frozen=True)
class FisherStats:
    """dFIL per image with its standard error, for one release noise ``sigma``."""

    per_image: Tensor
    stderr: Tensor
    probes: int
    sigma: float

    def to_dict(self) -> dict[str, Any]:
        """The ``dfil`` entry of ``report.json`` / ``run.json`` (dFIL per input value;
        ``psnr_cap`` in dB from the 95th percentile: it holds for 95 % of the images)."""
        values = self.per_image.double()
        p95 = float(torch.quantile(values, QUANTILE))
        relative = self.stderr.double() / values.clamp_min(1e-300)
        return {
            "mean": float(values.mean()),
            "median": float(values.median()),
            "p95": p95,
            "psnr_cap": psnr_cap(p95),
            "psnr_cap_median": psnr_cap(float(values.median())),
            "mse_bound": 1.0 / p95,
            "probes": self.probes,
            "sigma": float(self.sigma),
            "images": int(values.numel()),
            # standard error of the mean over images, and the median per-image relative one
            "stderr": float(self.stderr.double().pow(2).sum().sqrt() / values.numel()),
            "relative_stderr": float(relative.median()),
        }


def measure_sensitivity(
    release: ReleaseFunction,
    pixels: Tensor,
    *,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    batch_size: int = 64,
) -> Sensitivity:
    """:class:`Sensitivity` of ``release`` at every image of ``pixels``, ``probes``
    Rademacher probes each (one ``torch.func.jvp`` per probe and batch)."""
    if probes < 1:
        raise ValueError(f"probes={probes!r} is invalid: expected an integer >= 1")
    generator = torch.Generator().manual_seed(seed)
    chunks = [
        _chunk(release, pixels[start : start + batch_size], probes, generator)
        for start in range(0, int(pixels.shape[0]), batch_size)
    ]
    learnt = chunks[0][2] is not None
    return Sensitivity(
        mean_sq=torch.cat([c[0] for c in chunks], dim=1),
        log_var_sq=torch.cat([c[1] for c in chunks], dim=1) if learnt else None,  # type: ignore[misc]
        log_var=torch.cat([c[2] for c in chunks]) if learnt else None,  # type: ignore[misc]
        values=int(pixels[0].numel()),
    )


def _chunk(
    release: ReleaseFunction, pixels: Tensor, probes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(mean_sq, log_var_sq, log_var)`` of one batch (see :class:`Sensitivity`)."""
    mean_sq, log_var_sq = [], []
    log_var: Tensor | None = None
    for _ in range(probes):
        signs = torch.randint(0, 2, pixels.shape, generator=generator).to(pixels) * 2 - 1
        with torch.no_grad():  # forward mode only: no graph for the weights
            primal, tangent = cast(
                tuple[tuple[Tensor, ...], tuple[Tensor, ...]],
                torch.func.jvp(lambda x: _outputs(release, x), (pixels,), (signs,)),
            )
        squares = tangent[0].flatten(1).double() ** 2
        if len(primal) == 1:
            mean_sq.append(squares.sum(dim=1, keepdim=True))
            continue
        mean_sq.append(squares)
        log_var_sq.append(tangent[1].flatten(1).double() ** 2)
        log_var = primal[1].flatten(1).double()
    return (
        torch.stack(mean_sq),
        torch.stack(log_var_sq) if log_var_sq else None,
        log_var,
    )


def _outputs(release: ReleaseFunction, pixels: Tensor) -> tuple[Tensor, ...]:
    mean, log_var = release(pixels)
    return (mean,) if log_var is None else (mean, log_var)


def calibrate_sigma(sensitivity: Sensitivity, target_dfil: float) -> float:
    """The smallest release noise σ whose 95th-percentile dFIL is at most ``target_dfil``.

    Fixed noise: dFIL ∝ 1/σ², so σ is closed-form. A learnt variance: dFIL falls with σ
    (σ² adds to every value's variance), found by bisection on log σ (0 when the learnt
    variance already meets the target).
    """
    if not target_dfil > 0:
        raise ValueError(f"target_dfil={target_dfil!r} is invalid: expected a number > 0")
    if sensitivity.log_var is None:
        at_unit = float(torch.quantile(sensitivity.dfil(1.0), QUANTILE))
        return math.sqrt(at_unit / target_dfil)

    def p95(sigma: float) -> float:
        return float(torch.quantile(sensitivity.dfil(sigma), QUANTILE))

    if p95(0.0) <= target_dfil:
        return 0.0
    low, high = 0.0, 1e-3
    while p95(high) > target_dfil:
        low, high = high, high * 4
        if high > 1e12:  # a Jacobian this large is a diverged model, not a release
            raise ValueError("no release noise reaches the target dFIL")
    for _ in range(60):
        middle = math.sqrt(low * high) if low > 0 else high / 4
        if p95(middle) > target_dfil:
            low = middle
        else:
            high = middle
    return high


def total_dfil(sensitivities: Mapping[str, Sensitivity], sigmas: Mapping[str, float]) -> Tensor:
    """Per image, the dFIL of every task's release together (colluding consumers: the sum)."""
    return torch.stack([s.dfil(sigmas[t]) for t, s in sensitivities.items()]).sum(dim=0)


def calibrate_sigmas(
    sensitivities: Mapping[str, Sensitivity],
    target_dfil: float | None,
    max_total_dfil: float | None,
) -> dict[str, float]:
    """σ per task: each release's 95th-percentile dFIL at most ``target_dfil``, and the
    95th percentile of their per-image sum at most ``max_total_dfil`` (alone, it is
    shared equally). Percentiles do not add (the sum's is at most the sum of theirs), so
    every task's share is rescaled until the sum's p95 is on the bound, never above
    ``target_dfil``."""
    tasks = list(sensitivities)
    per_task = target_dfil if target_dfil is not None else math.inf
    if max_total_dfil is not None:
        per_task = min(per_task, max_total_dfil / len(tasks))
    if not math.isfinite(per_task):
        raise ValueError("set a target dFIL or a maximum total")
    sigmas = {t: calibrate_sigma(sensitivities[t], per_task) for t in tasks}
    ceiling = target_dfil if target_dfil is not None else math.inf
    for _ in range(30):
        if max_total_dfil is None:
            break
        total = float(torch.quantile(total_dfil(sensitivities, sigmas), QUANTILE))
        over = total > max_total_dfil * (1 + 1e-9)
        if not over and (total >= max_total_dfil * (1 - 1e-6) or per_task >= ceiling):
            break
        per_task = min(ceiling, per_task * max_total_dfil / max(total, 1e-300))
        sigmas = {t: calibrate_sigma(sensitivities[t], per_task) for t in tasks}
    return sigmas


def producer_release(producer: Producer, task: str, *, mean: float, std: float) -> ReleaseFunction:
    """``task``'s release of ``producer`` as a function of pixels in [0, 1]: the transform's
    normalisation ``(x − mean) / std``, the encoder, the task's module and its release
    stage's code (mean after the eraser, and the learnt log-variance)."""

    def release(pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        images = (pixels - mean) / std
        features = producer.task_modules[task](producer.encode(images))
        if task not in producer.releases:
            return features, None
        return producer.release_of(task).code(features)

    return release


def release_sigmas(producer: Producer, tasks: Sequence[str]) -> dict[str, float]:
    """Each task's release noise σ (0 without a release stage)."""
    return {t: producer.release_of(t).noise if t in producer.releases else 0.0 for t in tasks}


def set_release_sigmas(producer: Producer, sigmas: Mapping[str, float]) -> None:
    """Set each task's release noise σ (every task named must have a release stage)."""
    for task, sigma in sigmas.items():
        producer.release_of(task).noise = float(sigma)


def total_stats(
    sensitivities: Mapping[str, Sensitivity], sigmas: Mapping[str, float]
) -> dict[str, float]:
    """Mean, median, 95th percentile and PSNR cap of the per-image dFIL summed over every
    task's release (colluding consumers)."""
    total = total_dfil(sensitivities, sigmas).double()
    p95 = float(torch.quantile(total, QUANTILE))
    return {
        "mean": float(total.mean()),
        "median": float(total.median()),
        "p95": p95,
        "psnr_cap": psnr_cap(p95),
    }


def has_bound(producer: Producer, task: str) -> bool:
    """Whether ``task``'s release is noisy, so its Fisher information is finite."""
    return task in producer.releases and producer.release_of(task).noisy
