"""SSIM / MS-SSIM against skimage, pytorch-msssim and a naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_msssim
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from metamorphosis.losses.ssim import (
    MS_SSIM_WEIGHTS,
    fit_window,
    ms_ssim_num_scales,
    ms_ssim_per_sample,
    ssim_per_sample,
)

FEW = settings(max_examples=25, deadline=None)


def _pair(seed: int, shape: tuple[int, ...], noise: float, data_range: float = 1.0):
    """Correlated images in [0, data_range] so SSIM spans its whole range."""
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + noise * rng.standard_normal(shape), 0.0, 1.0)
    return x * data_range, y * data_range


def _skimage(x: np.ndarray, y: np.ndarray, **kwargs) -> np.ndarray:
    return np.array(
        [
            structural_similarity(a, b, channel_axis=0, use_sample_covariance=False, **kwargs)
            for a, b in zip(x, y, strict=True)
        ]
    )


def _naive_ssim(x: np.ndarray, y: np.ndarray, kernel: np.ndarray, data_range: float) -> np.ndarray:
    """Window-by-window SSIM with a 2-D ``kernel``, one sample at a time."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    w = kernel.shape[0]
    out = []
    for a, b in zip(x, y, strict=True):
        values = []
        for c in range(a.shape[0]):
            for i in range(a.shape[1] - w + 1):
                for j in range(a.shape[2] - w + 1):
                    pa, pb = a[c, i : i + w, j : j + w], b[c, i : i + w, j : j + w]
                    ma, mb = (kernel * pa).sum(), (kernel * pb).sum()
                    va = (kernel * (pa - ma) ** 2).sum()
                    vb = (kernel * (pb - mb) ** 2).sum()
                    cov = (kernel * (pa - ma) * (pb - mb)).sum()
                    lum = (2 * ma * mb + c1) / (ma**2 + mb**2 + c1)
                    values.append(lum * (2 * cov + c2) / (va + vb + c2))
        out.append(np.mean(values))
    return np.array(out)


@FEW
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(11, 20),
    w=st.integers(11, 20),
    noise=st.floats(0.0, 1.0),
    data_range=st.sampled_from([1.0, 2.0, 255.0]),
    seed=st.integers(0, 2**16),
)
def test_gaussian_matches_skimage(n, c, h, w, noise, data_range, seed):
    x, y = _pair(seed, (n, c, h, w), noise, data_range)
    ours = ssim_per_sample(torch.from_numpy(x), torch.from_numpy(y), data_range=data_range)
    ref = _skimage(x, y, data_range=data_range, gaussian_weights=True, sigma=1.5)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-7, rtol=0)


@FEW
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    max_window=st.integers(1, 11),
    noise=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_uniform_fitted_window_matches_skimage(n, c, h, w, max_window, noise, seed):
    x, y = _pair(seed, (n, c, h, w), noise)
    ours = ssim_per_sample(
        torch.from_numpy(x), torch.from_numpy(y), window="uniform", max_window=max_window
    )
    size = fit_window(h, w, max_window)
    ref = _skimage(x, y, data_range=1.0, gaussian_weights=False, win_size=size)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(5, 5), (7, 9)])
def test_uniform_small_maps_named_cases(h, w):
    x, y = _pair(0, (2, 3, h, w), 0.3)
    ours = ssim_per_sample(torch.from_numpy(x), torch.from_numpy(y), window="uniform")
    ref = _skimage(x, y, data_range=1.0, gaussian_weights=False, win_size=min(h, w))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-7, rtol=0)


@FEW
@given(
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    noise=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_fitted_gaussian_matches_naive_loop(h, w, noise, seed):
    x, y = _pair(seed, (2, 2, h, w), noise)
    size = fit_window(h, w)
    sigma = 1.5 * size / 11
    coords = np.arange(size) - size // 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    g /= g.sum()
    ours = ssim_per_sample(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(ours.numpy(), _naive_ssim(x, y, np.outer(g, g), 1.0), atol=1e-10)


@pytest.mark.parametrize(
    ("h", "w", "max_window", "expected"),
    [(1, 1, 11, 1), (2, 2, 11, 1), (3, 8, 11, 3), (5, 5, 11, 5), (7, 9, 11, 7), (10, 10, 11, 9),
     (16, 16, 11, 11), (12, 30, 11, 11), (16, 16, 4, 3), (16, 16, 7, 7)],
)  # fmt: skip
def test_fit_window(h, w, max_window, expected):
    assert fit_window(h, w, max_window) == expected


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 3, 6, 4), (2, 1, 16, 16)])
def test_identical_inputs_give_one(shape):
    x = torch.rand(shape, dtype=torch.float64)
    torch.testing.assert_close(ssim_per_sample(x, x), torch.ones(shape[0], dtype=torch.float64))
    torch.testing.assert_close(ms_ssim_per_sample(x, x), torch.ones(shape[0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("fn", "size"),
    [(ssim_per_sample, 9), (ssim_per_sample, 16), (ms_ssim_per_sample, 48)],
)
def test_value_of_a_sample_does_not_depend_on_the_others(fn, size):
    torch.manual_seed(0)
    x = torch.rand(4, 2, size, size, dtype=torch.float64, requires_grad=True)
    y = (x.detach() + 0.2 * torch.randn_like(x)).clamp(0, 1)
    batch = fn(x, y)
    alone = torch.cat([fn(x[i : i + 1], y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-12)

    other = torch.rand_like(y)
    other[1] = y[1]
    assert fn(x, other)[1].item() == pytest.approx(batch[1].item(), abs=1e-12)

    (grad,) = torch.autograd.grad(batch[1], x)
    assert grad[1].abs().sum() > 0
    assert torch.all(grad[[0, 2, 3]] == 0)


def test_ssim_gradcheck_on_small_maps():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ssim_per_sample(a, b), (x, y), fast_mode=True)
    xm = torch.rand(1, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    ym = (xm.detach() + 0.1 * torch.rand_like(xm)).requires_grad_()
    assert ms_ssim_num_scales(10, 10, max_window=5) == 2
    assert torch.autograd.gradcheck(
        lambda a, b: ms_ssim_per_sample(a, b, max_window=5), (xm, ym), fast_mode=True
    )


@pytest.mark.parametrize(
    ("h", "w", "max_window", "expected"),
    [(192, 192, 11, 5), (1000, 1000, 11, 5), (22, 40, 11, 2), (21, 40, 11, 1), (16, 16, 11, 1),
     (16, 16, 7, 2), (1, 1, 11, 1), (44, 44, 11, 3)],
)  # fmt: skip
def test_ms_ssim_num_scales(h, w, max_window, expected):
    assert ms_ssim_num_scales(h, w, max_window=max_window) == expected


@FEW
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 21),
    w=st.integers(1, 21),
    noise=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_ms_ssim_is_ssim_when_one_scale_fits(n, c, h, w, noise, seed):
    x, y = _pair(seed, (n, c, h, w), noise)
    x, y = torch.from_numpy(x), torch.from_numpy(1.0 - y if seed % 2 else y)  # negatives too
    assert ms_ssim_num_scales(h, w) == 1
    torch.testing.assert_close(ms_ssim_per_sample(x, y), ssim_per_sample(x, y), rtol=0, atol=1e-12)


def test_ms_ssim_matches_pytorch_msssim_on_a_large_map():
    """Same algorithm on a 192×192 map (every pooled side even, all 5 scales fit
    the 11 window), so only two known differences remain: pytorch-msssim builds
    its kernel in float32 (~1e-7 after amplification at coarse scales, measured
    < 1e-6 here) and does not renormalise the weights, which sum to 1.0001. The
    latter changes v into v ** (1 / 1.0001), at most 1e-4 / e ≈ 3.7e-5 apart."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 192, 192, dtype=torch.float64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    ours = ms_ssim_per_sample(x, y)
    normalised = [w / sum(MS_SSIM_WEIGHTS) for w in MS_SSIM_WEIGHTS]
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1, size_average=False, weights=normalised)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    ref_default = pytorch_msssim.ms_ssim(x, y, data_range=1, size_average=False)
    torch.testing.assert_close(ours, ref_default, rtol=0, atol=1e-4)
    ours32 = ms_ssim_per_sample(x.float(), y.float())
    torch.testing.assert_close(ours32.double(), ours, rtol=0, atol=1e-5)


def test_ms_ssim_has_finite_gradients_when_terms_are_negative():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 48, 48, dtype=torch.float64, requires_grad=True)
    value = ms_ssim_per_sample(x, 1.0 - x)  # anti-correlated: cs < 0 at every scale
    assert torch.all(value >= 0)
    value.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_ssim_is_differentiable_and_finite_for_constant_maps():
    x = torch.zeros(2, 3, 8, 8, requires_grad=True)
    value = ssim_per_sample(x, torch.ones(2, 3, 8, 8))
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"window": "box"}, "window"), ({"max_window": 0}, "max_window"),
     ({"data_range": 0.0}, "data_range"), ({"sigma": -1.0}, "sigma")],
)  # fmt: skip
def test_bad_options_are_named(kwargs, message):
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=message):
        ssim_per_sample(x, x, **kwargs)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8\) and \(1, 1, 8, 7\)"):
        ssim_per_sample(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 7))
    with pytest.raises(ValueError, match="N×C×H×W"):
        ms_ssim_per_sample(torch.rand(8, 8), torch.rand(8, 8))
