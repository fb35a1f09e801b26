"""Per-sample SSIM and MS-SSIM whose window always fits the map.

The task-privacy penalty compares small feature maps (e.g. 16×16), where the
common 11×11 window either does not fit or silently degenerates (pytorch-msssim
skips the blur along a side shorter than its window and returns wrong values).
Here the window is *fitted*: its size is the largest odd number that is at most
``min(H, W, max_window)``, and a Gaussian window shrinks its sigma with it so
that the kernel keeps the shape of the standard 11-tap, sigma 1.5 one.

Every statistic is computed per sample (mean over channels and the valid
region), never pooled over the batch: the penalty is part of a loss whose
per-sample gradients DP-SGD clips, so sample ``i``'s value must depend on
sample ``i`` only.

With the defaults and maps of at least 11×11 the SSIM equals
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``; with ``window="uniform"`` it equals skimage's
uniform-window SSIM with ``win_size`` set to the fitted size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MS_SSIM_WEIGHTS",
    "SSIM_WINDOWS",
    "fit_window",
    "ms_ssim_num_scales",
    "ms_ssim_per_sample",
    "pairwise_ssim_per_sample",
    "ssim_per_sample",
]

SSIM_WINDOWS = ("gaussian", "uniform")
#: Per-scale exponents of Wang, Simoncelli & Bovik (2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_REFERENCE_WINDOW = 11  # the window that the default sigma (1.5) is meant for
_POW_FLOOR = 1e-12  # keeps the gradient of a fractional power finite near 0


def fit_window(height: int, width: int, max_window: int = 11) -> int:
    """Largest odd window size that fits an ``height`` × ``width`` map.

    Args:
        height: map height (>= 1).
        width: map width (>= 1).
        max_window: upper bound on the window size.

    Returns:
        The largest odd ``w <= min(height, width, max_window)``; 1 for 1×1 or
        2×2 maps, for which SSIM reduces to its luminance term.
    """
    size = min(height, width, max_window)
    if size < 1:
        raise ValueError(
            f"cannot fit an SSIM window to a {height}x{width} map with max_window={max_window}"
        )
    return size if size % 2 == 1 else size - 1


def ms_ssim_num_scales(
    height: int, width: int, *, max_window: int = 11, max_scales: int = 5
) -> int:
    """Number of scales :func:`ms_ssim_per_sample` uses for a map of this size.

    A further (2×2 average-pooled) scale is added while the next, halved map
    still holds the full ``max_window`` window, i.e. while
    ``min(H, W) // 2**k >= max_window``, up to ``max_scales``. So every scale
    but a lone first one uses the same window, as in standard MS-SSIM, and a
    map smaller than ``2 * max_window`` gets a single scale (plain SSIM with the
    fitted window). For 192×192 and an 11 window this gives the usual 5 scales
    (192, 96, 48, 24, 12); for 16×16 feature maps it gives one scale unless a
    smaller ``max_window`` is chosen (7 → 2 scales).
    """
    side = min(height, width)
    scales = 1
    while scales < max_scales and side // 2 >= max_window:
        side //= 2
        scales += 1
    return scales


def _check_pair(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() != 4:
        raise ValueError(f"x and y must be N×C×H×W, got shape {tuple(x.shape)}")
    if min(x.shape[1:]) < 1:
        raise ValueError(f"x and y must have non-empty C, H and W, got shape {tuple(x.shape)}")
    if not x.is_floating_point() or not y.is_floating_point():
        raise ValueError(f"x and y must be floating point, got {x.dtype} and {y.dtype}")


def _check_options(window: str, max_window: int, sigma: float, data_range: float) -> None:
    if window not in SSIM_WINDOWS:
        raise ValueError(f"window={window!r} is invalid: expected one of {', '.join(SSIM_WINDOWS)}")
    if isinstance(max_window, bool) or not isinstance(max_window, int) or max_window < 1:
        raise ValueError(f"max_window={max_window!r} is invalid: expected an integer >= 1")
    if not sigma > 0:
        raise ValueError(f"sigma={sigma!r} is invalid: expected a number > 0")
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r} is invalid: expected a number > 0")


def _window_1d(size: int, window: str, sigma: float, like: Tensor) -> Tensor:
    """Normalised 1-D window; the 2-D window is its outer product (separable)."""
    if window == "uniform":
        kernel = torch.full((size,), 1.0 / size, dtype=torch.float64)
    else:
        # Shrink sigma with the window so a fitted window is a scaled copy of the
        # standard one instead of a hard-truncated Gaussian.
        scaled = sigma * min(1.0, size / _REFERENCE_WINDOW)
        coords = torch.arange(size, dtype=torch.float64) - size // 2
        kernel = torch.exp(-(coords**2) / (2.0 * scaled**2))
        kernel = kernel / kernel.sum()
    return kernel.to(device=like.device, dtype=like.dtype)


def _filter(stack: Tensor, kernel: Tensor) -> Tensor:
    """Valid (unpadded) depthwise separable filtering of every channel of ``stack``."""
    channels = stack.shape[1]
    size = kernel.numel()
    if size == 1:
        return stack
    horizontal = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    vertical = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    out = F.conv2d(stack, horizontal, groups=channels)
    return F.conv2d(out, vertical, groups=channels)


def _ssim_maps(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float,
    window: str,
    max_window: int,
    sigma: float,
    k1: float,
    k2: float,
) -> tuple[Tensor, Tensor]:
    """SSIM and contrast-structure maps (N×C×H'×W') over the valid region."""
    size = fit_window(x.shape[-2], x.shape[-1], max_window)
    kernel = _window_1d(size, window, sigma, x)
    channels = x.shape[1]
    # One filtering pass over the five moment images (grouped per channel).
    moments = _filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(channels, dim=1)
    return _ssim_from_moments((mu_x, e_xx), (mu_y, e_yy), e_xy, data_range, k1, k2)


def _ssim_from_moments(
    x: tuple[Tensor, Tensor],
    y: tuple[Tensor, Tensor],
    e_xy: Tensor,
    data_range: float,
    k1: float,
    k2: float,
) -> tuple[Tensor, Tensor]:
    """SSIM and contrast-structure maps from the local moments ``(E[x], E[x²])`` of each
    map and ``E[xy]``, all filtered with the same window."""
    (mu_x, e_xx), (mu_y, e_yy) = x, y
    var_x = e_xx - mu_x * mu_x  # population (biased) covariance, as Wang et al. 2004
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    cs_map = (2.0 * cov_xy + c2) / (var_x + var_y + c2)
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return luminance * cs_map, cs_map


def pairwise_ssim_per_sample(
    maps: Sequence[Tensor],
    pairs: Sequence[tuple[int, int]],
    *,
    data_range: float = 1.0,
    window: str = "gaussian",
    max_window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """:func:`ssim_per_sample` of ``maps[i]`` with ``maps[j]`` for every pair, as P×N.

    Each map's local moments (E[x], E[x²]) are filtered once, however many pairs
    it is in; only E[xy] is filtered per pair. For k maps in every pair that is
    2k + k(k-1)/2 filtered images per sample instead of 5·k(k-1)/2 (3 tasks: 9
    instead of 15). The values equal those of :func:`ssim_per_sample`.
    """
    if not maps or not pairs:
        raise ValueError("give at least one map and one (i, j) pair")
    for other in maps:
        _check_pair(maps[0], other)
    _check_options(window, max_window, sigma, data_range)
    first = maps[0]
    k, n, channels = len(maps), first.shape[0], first.shape[1]
    size = fit_window(first.shape[-2], first.shape[-1], max_window)
    kernel = _window_1d(size, window, sigma, first)
    stacked = torch.cat(list(maps))  # (k·N)×C×H×W
    mu, e_sq = _filter(torch.cat([stacked, stacked * stacked], dim=1), kernel).split(channels, 1)
    products = torch.cat([maps[i] * maps[j] for i, j in pairs])  # (P·N)×C×H×W
    e_xy = _filter(products, kernel)
    mu, e_sq = mu.unflatten(0, (k, n)), e_sq.unflatten(0, (k, n))
    left, right = [i for i, _ in pairs], [j for _, j in pairs]
    ssim_map, _ = _ssim_from_moments(
        (mu[left].flatten(0, 1), e_sq[left].flatten(0, 1)),
        (mu[right].flatten(0, 1), e_sq[right].flatten(0, 1)),
        e_xy,
        data_range,
        k1,
        k2,
    )
    return ssim_map.mean(dim=(1, 2, 3)).view(len(pairs), n)


def ssim_per_sample(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    window: str = "gaussian",
    max_window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Differentiable SSIM of each sample of ``x`` with the same sample of ``y``.

    Args:
        x: N×C×H×W floating tensor.
        y: tensor of the same shape, dtype and device.
        data_range: dynamic range L of the values; sets the stabilisers
            ``c1 = (k1 L)**2`` and ``c2 = (k2 L)**2``.
        window: ``"gaussian"`` or ``"uniform"``.
        max_window: largest window size; the window used is
            :func:`fit_window` of the map, so tiny maps still get a true SSIM.
        sigma: Gaussian sigma for an 11-tap window; scaled by ``w / 11`` when
            the fitted size ``w`` is below 11.
        k1: luminance stabiliser constant.
        k2: contrast-structure stabiliser constant.

    Returns:
        Tensor of shape (N,): the SSIM map averaged over channels and the
        valid (unpadded) region of each sample. No statistic is shared
        between samples.
    """
    _check_pair(x, y)
    _check_options(window, max_window, sigma, data_range)
    ssim_map, _ = _ssim_maps(
        x, y, data_range=data_range, window=window, max_window=max_window, sigma=sigma, k1=k1, k2=k2
    )
    return ssim_map.mean(dim=(1, 2, 3))


def _safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``relu(base) ** exponent`` whose gradient is 0, not NaN, where base <= 0."""
    positive = base > 0
    return torch.where(positive, base.clamp_min(_POW_FLOOR) ** exponent, torch.zeros_like(base))


def ms_ssim_per_sample(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    window: str = "gaussian",
    max_window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> Tensor:
    """Differentiable multi-scale SSIM per sample, with as many scales as fit.

    The number of scales is :func:`ms_ssim_num_scales` (at most
    ``len(weights)``); the weights of the scales used are renormalised to sum
    to 1. Each coarser scale is a 2×2 average pool with stride 2 (odd sides
    drop their last row / column; pytorch-msssim zero-pads them instead, so the
    two agree exactly only when every pooled side is even). At every scale the
    window is fitted to the map. Per channel, the value is
    ``prod_{s<S} cs_s ** w_s * ssim_S ** w_S`` with ``cs`` and the last scale's
    SSIM clamped at 0 before the fractional power (a negative base would give
    NaN); the channels are then averaged, as pytorch-msssim does.

    With a single scale the weight is 1, no clamping is needed, and the result
    is exactly :func:`ssim_per_sample` (negative values included).

    Args:
        x: N×C×H×W floating tensor.
        y: tensor of the same shape.
        data_range: see :func:`ssim_per_sample`.
        window: see :func:`ssim_per_sample`.
        max_window: see :func:`ssim_per_sample` and :func:`ms_ssim_num_scales`.
        sigma: see :func:`ssim_per_sample`.
        k1: see :func:`ssim_per_sample`.
        k2: see :func:`ssim_per_sample`.
        weights: per-scale exponents, finest first.

    Returns:
        Tensor of shape (N,).
    """
    _check_pair(x, y)
    _check_options(window, max_window, sigma, data_range)
    if len(weights) < 1 or any(not w > 0 for w in weights):
        raise ValueError(f"weights={tuple(weights)!r} is invalid: expected positive numbers")
    scales = ms_ssim_num_scales(
        x.shape[-2], x.shape[-1], max_window=max_window, max_scales=len(weights)
    )
    used = [float(w) for w in weights[:scales]]
    total = sum(used)
    exponents = [w / total for w in used]

    def maps(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return _ssim_maps(
            a,
            b,
            data_range=data_range,
            window=window,
            max_window=max_window,
            sigma=sigma,
            k1=k1,
            k2=k2,
        )

    if scales == 1:
        ssim_map, _ = maps(x, y)
        return ssim_map.mean(dim=(1, 2, 3))

    value: Tensor | None = None
    for scale, exponent in enumerate(exponents):
        ssim_map, cs_map = maps(x, y)
        last = scale == scales - 1
        per_channel = (ssim_map if last else cs_map).mean(dim=(2, 3))  # N×C
        term = _safe_pow(per_channel, exponent)
        value = term if value is None else value * term
        if not last:
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
            y = F.avg_pool2d(y, kernel_size=2, stride=2)
    assert value is not None
    return value.mean(dim=1)
