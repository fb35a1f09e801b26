"""What the producer does to a task's features before releasing them.

After its metamorphosis module, each label's features go through a
:class:`Release` stage (``defence`` in the config):

1. an optional variational information bottleneck: a code ``z`` of few channels,
   ``z = μ(f) + s(f)·ε`` (Alemi et al., "Deep Variational Information
   Bottleneck", ICLR 2017), with KL(q(z|x) ‖ N(0, I)) kept for the training loss.
   Optionally the code is pooled to ``code_size × code_size`` positions (1: one
   vector per image). A global property (a background tint, a face's
   gender) is written at every position of a map, so per-position noise on a
   large map averages out for an attacker who pools; a small code has as few
   values as the task needs. Channel ``gaussian`` replaces the learnt ``s(f)``
   (a function of the image, whose spread is itself released: an attacker can
   read ``|z|``) by a fixed σ, and bounds each code value in (−1, 1) (a tanh):
   an additive Gaussian channel of power at most 1 per value, of capacity
   (d/2)·ln(1 + 1/σ²) nats (d: the code's values), which bounds what one
   release tells about the image whatever the attacker (the noise is keyed, so
   an attacker without the secret sees it as random);
2. an optional linear eraser (LEACE, fitted after training on the code's mean);
3. Gaussian noise of a fixed standard deviation on the code;
4. with a bottleneck, a 1×1 convolution back to the module's channels (and a
   nearest-neighbour upsampling of a small code back to the module's map size),
   so the consumer heads, the audit and the service see the map shape they always
   saw. It is a fixed map of the code: it adds nothing to what is released.

Noise is fresh in training. At release it is **keyed**: drawn from a generator
seeded by SHA-256 of (producer secret, task, image), so the same image gives the
same features every time and under any id, and averaging repeated fetches gains
nothing. The secret is what stops a consumer from reproducing the draw; it is
kept beside the weights (``release.key`` in the run dir), never in ``run.json``.
What keyed noise does not stop: whoever can submit *slightly altered copies* of
an image gets fresh draws. The service only releases the producer's own images.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "SECRET_BYTES",
    "LinearEraser",
    "CodePool",
    "Release",
    "VariationalBottleneck",
    "gaussian_kl",
    "kl_scale",
    "keyed_normal",
    "new_secret",
]

SECRET_BYTES = 32
INITIAL_LOG_VAR = -6.0  # the bottleneck's starting log-variance (see VariationalBottleneck)


def new_secret() -> bytes:
    """A fresh producer secret for keyed release noise."""
    return secrets.token_bytes(SECRET_BYTES)


def keyed_normal(images: Tensor, task: str, secret: bytes, shape: Sequence[int]) -> Tensor:
    """One N(0, I) draw of ``shape`` per image, fixed by (secret, task, image).

    The image is hashed as the float32 tensor the producer receives, so the draw
    follows the pixels, not any id they are requested under.
    """
    draws = []
    for image in images.detach().to("cpu", torch.float32).contiguous():
        digest = hashlib.sha256()
        digest.update(secret)
        digest.update(task.encode("utf-8") + b"\0")
        digest.update(image.numpy().tobytes())
        seed = int.from_bytes(digest.digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        draws.append(torch.randn(tuple(shape), generator=generator))
    return torch.stack(draws).to(images.device)


class VariationalBottleneck(nn.Module):
    """Mean and log-variance of a ``channels``-channel code.

    Without ``code_size`` they are 1×1 convolutions of the map (a code at every
    position). With ``code_size`` s, :class:`CodePool` pools the map to s × s
    first (s = 1: one vector per image). ``channel`` ``gaussian``: no
    log-variance, and the mean goes through a tanh, so each value is in (−1, 1)
    (the code's noise is fixed by the release). The log-variance is
    clamped to [-10, 10]: a collapsed or exploding posterior would make the KL
    term and the sample overflow long before it means anything.
    """

    log_var: nn.Conv2d | None

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        code_size: int | None = None,
        channel: str = "vib",
    ) -> None:
        super().__init__()
        self.pool: nn.Module = (
            CodePool(in_channels, code_size) if code_size is not None else nn.Identity()
        )
        pooled = in_channels if code_size is None else 2 * in_channels
        self.mean = nn.Conv2d(pooled, channels, kernel_size=1)
        self.log_var = nn.Conv2d(pooled, channels, kernel_size=1) if channel == "vib" else None
        if self.log_var is not None and self.log_var.bias is not None:
            # start from a narrow posterior (variance e^-6): a unit one would drown the
            # freshly initialised mean, and the heads would see noise before any signal
            nn.init.constant_(self.log_var.bias, INITIAL_LOG_VAR)
        self.code_size = code_size
        self.channel = channel

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        pooled = self.pool(features)
        mean = self.mean(pooled)
        if self.channel == "gaussian":
            mean = torch.tanh(mean)  # |z| < 1: the channel's power limit
        log_var = None if self.log_var is None else self.log_var(pooled).clamp(-10.0, 10.0)
        return mean, log_var


class CodePool(nn.Module):
    """A 3×3 convolution and a ReLU, then the average and the maximum over each of
    ``size × size`` regions, side by side (2 × channels): the maximum keeps "a red
    shape is here", the average "how much of it"; the plain mean of the map would
    drown one object's colour in its background's."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.average = nn.AdaptiveAvgPool2d(size)
        self.maximum = nn.AdaptiveMaxPool2d(size)

    def forward(self, features: Tensor) -> Tensor:
        active = torch.relu(self.conv(features))
        return torch.cat([self.average(active), self.maximum(active)], dim=1)


def kl_scale(warmup: int, epoch: int) -> float:
    """The KL weight's share in ``epoch`` (0-based) of a phase: a linear ramp over
    ``warmup`` epochs, from 0 in the first, then 1 (KL annealing, Bowman et al., 2016)."""
    return 1.0 if warmup <= 0 else min(1.0, epoch / warmup)


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """Per-sample KL(N(mean, exp(log_var)) ‖ N(0, I)), summed over the code."""
    kl = 0.5 * (mean * mean + log_var.exp() - 1.0 - log_var)
    return kl.flatten(1).sum(dim=1)


class LinearEraser(nn.Module):
    """``x ↦ x − ((x − bias) Rᵀ) Lᵀ`` on the flattened code: LEACE's eraser, stored as
    its low-rank factors (``L``: d × r, ``R``: r × d). All zeros (the identity) until
    :meth:`load` fills it; the shapes are fixed by the config so a run dir's weights
    load into a freshly built producer.
    """

    proj_left: Tensor
    proj_right: Tensor
    bias: Tensor
    fitted: Tensor

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.register_buffer("proj_left", torch.zeros(dim, rank))
        self.register_buffer("proj_right", torch.zeros(rank, dim))
        self.register_buffer("bias", torch.zeros(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def load(self, proj_left: Tensor, proj_right: Tensor, bias: Tensor) -> None:
        """Take a fitted eraser's factors (rank ≤ this eraser's; the rest stays zero)."""
        rank = proj_left.shape[1]
        self.proj_left.zero_()
        self.proj_right.zero_()
        self.proj_left[:, :rank] = proj_left.to(self.proj_left)
        self.proj_right[:rank] = proj_right.to(self.proj_right)
        self.bias.copy_(bias.to(self.bias))
        self.fitted.fill_(True)

    def forward(self, code: Tensor) -> Tensor:
        flat = code.flatten(1)
        erased = flat - ((flat - self.bias) @ self.proj_right.T) @ self.proj_left.T
        return erased.view_as(code)


class Release(nn.Module):
    """One label's release stage: bottleneck, eraser, noise (see the module docstring).

    Args:
        channels: the module's output channels.
        bottleneck_channels: the code's channels (None: no bottleneck; the code is
            the module output).
        beta: weight of the KL term in the training loss.
        noise: standard deviation of the Gaussian noise added to the code.
        eraser_shape: ``(d, r)`` of the linear eraser (None: no eraser).
        code_size: the side of the bottleneck's code (None: the module's map size).
        channel: ``vib`` (a learnt variance) or ``gaussian`` (values in (−1, 1), noise σ).
    """

    def __init__(
        self,
        channels: int,
        *,
        bottleneck_channels: int | None = None,
        beta: float = 0.0,
        noise: float = 0.0,
        eraser_shape: tuple[int, int] | None = None,
        code_size: int | None = None,
        channel: str = "vib",
    ) -> None:
        super().__init__()
        self.bottleneck = (
            VariationalBottleneck(
                channels,
                bottleneck_channels,
                code_size=code_size,
                channel=channel,
            )
            if bottleneck_channels is not None
            else None
        )
        self.expand = (
            nn.Conv2d(bottleneck_channels, channels, kernel_size=1)
            if bottleneck_channels is not None
            else None
        )
        self.eraser = LinearEraser(*eraser_shape) if eraser_shape is not None else None
        self.beta = beta
        self.noise = noise
        #: Per-sample β·KL of the last training forward pass (None without a bottleneck).
        self.kl: Tensor | None = None

    bottleneck: VariationalBottleneck | None
    expand: nn.Conv2d | None
    eraser: LinearEraser | None

    def code(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """The code's mean (erased when an eraser is fitted) and its log-variance."""
        if self.bottleneck is None:
            mean, log_var = features, None
        else:
            mean, log_var = self.bottleneck(features)
        if self.eraser is not None and bool(self.eraser.fitted):
            mean = self.eraser(mean)
        return mean, log_var

    def forward(self, features: Tensor, draw: Tensor | None = None) -> Tensor:
        """Released features; ``draw`` is the N(0, I) noise (fresh in training when None)."""
        mean, log_var = self.code(features)
        if self.training:
            self.kl = None if log_var is None else self.beta * gaussian_kl(mean, log_var)
            if draw is None and self.noisy:
                draw = torch.randn_like(mean)
        code = mean if draw is None else mean + self.std(log_var) * draw
        if self.expand is None:
            return code
        expanded = self.expand(code)
        if expanded.shape[-2:] != features.shape[-2:]:  # a small code: back to the map's size
            expanded = nn.functional.interpolate(expanded, size=features.shape[-2:], mode="nearest")
        return expanded

    def std(self, log_var: Tensor | None) -> Tensor | float:
        """Standard deviation of the released code's noise: posterior and added noise."""
        if log_var is None:
            return self.noise
        return (log_var.exp() + self.noise**2).sqrt()

    @property
    def noisy(self) -> bool:
        """Whether released features carry noise (and so need the producer's secret)."""
        learned = self.bottleneck is not None and self.bottleneck.log_var is not None
        return learned or self.noise > 0

    def code_shape(self, feature_shape: Sequence[int]) -> tuple[int, int, int]:
        """``(channels, H, W)`` of the code for module features of ``feature_shape``."""
        channels, height, width = feature_shape
        if self.bottleneck is not None:
            channels = self.bottleneck.mean.out_channels
            if self.bottleneck.code_size is not None:
                height = width = self.bottleneck.code_size
        return (channels, height, width)
