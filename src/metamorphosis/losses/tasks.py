"""Per-sample task losses for every label kind.

Every loss here returns one value per sample and never a batch mean: the
caller reduces. Under DP-SGD the producer's per-sample gradients are clipped,
so a loss that pooled statistics over the batch (a batch mean computed inside,
a per-batch normaliser over valid pixels) would let one sample's gradient
depend on the others and break the clipping guarantee. Dense losses therefore
average over the valid pixels *of each sample*.

Label conventions (fixed by the data layer), per batch of N:

=============  ====================  ==================================
kind           head output           target
=============  ====================  ==================================
binary         N×1 logits            N float 0./1.
multiclass     N×K logits            N int64
segmentation   N×K×H×W logits        N×H×W int64, ``IGNORE_INDEX`` void
depth          N×1×H×W               N×1×H×W float, 0 = invalid pixel
normals        N×3×H×W (any norm)    N×3×H×W unit vectors, 0 = invalid
=============  ====================  ==================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LABEL_KINDS
from ..errors import ConfigError

__all__ = ["IGNORE_INDEX", "TASK_KINDS", "check_task_pair", "task_loss"]

#: Segmentation label of void pixels, excluded from losses and metrics.
IGNORE_INDEX = -1
TASK_KINDS = LABEL_KINDS


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _mismatch(kind: str, output: Tensor, target: Tensor, expected: str) -> ValueError:
    return ValueError(
        f"{kind}: output shape {_shape(output)} does not match target shape {_shape(target)} "
        f"(expected {expected})"
    )


def check_task_pair(kind: str, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a head output against its target and return canonical forms.

    Shared by :func:`task_loss` and :mod:`metamorphosis.metrics` so that both
    accept exactly the same shapes.

    Args:
        kind: one of :data:`TASK_KINDS`.
        output: the head output.
        target: the batch of labels.

    Returns:
        ``(output, target)``; binary outputs and targets are flattened to (N,),
        other kinds are returned unchanged.

    Raises:
        ConfigError: ``kind`` is unknown.
        ValueError: the shapes do not fit together, or class targets are not
            integers.
    """
    if kind not in TASK_KINDS:
        raise ConfigError(f"kind={kind!r} is invalid: expected one of {', '.join(TASK_KINDS)}")
    if kind == "binary":
        ok = output.dim() in (1, 2) and (output.dim() == 1 or output.shape[1] == 1)
        ok = ok and target.dim() in (1, 2) and (target.dim() == 1 or target.shape[1] == 1)
        if not ok or output.shape[0] != target.shape[0]:
            raise _mismatch(kind, output, target, "output N×1 or N, target N")
        return output.reshape(-1), target.reshape(-1)
    if kind == "multiclass":
        if output.dim() != 2 or target.dim() != 1 or output.shape[0] != target.shape[0]:
            raise _mismatch(kind, output, target, "output N×K, target N")
        _check_integer(kind, target)
        return output, target
    if kind == "segmentation":
        ok = output.dim() == 4 and target.dim() == 3
        if not ok or output.shape[0] != target.shape[0] or output.shape[2:] != target.shape[1:]:
            raise _mismatch(kind, output, target, "output N×K×H×W, target N×H×W")
        _check_integer(kind, target)
        return output, target
    channels = 1 if kind == "depth" else 3
    if output.dim() != 4 or output.shape[1] != channels or output.shape != target.shape:
        raise _mismatch(kind, output, target, f"output and target both N×{channels}×H×W")
    return output, target


def _check_integer(kind: str, target: Tensor) -> None:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"{kind}: target must hold integer class indices, got dtype {target.dtype}"
        )


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` pixels of each sample; 0 where none is valid."""
    valid = valid.to(values.dtype)
    total = (values * valid).flatten(1).sum(dim=1)
    count = valid.flatten(1).sum(dim=1)
    return total / count.clamp_min(1.0)


def task_loss(kind: str, output: Tensor, target: Tensor) -> Tensor:
    """Per-sample loss of a head ``output`` against ``target``.

    Args:
        kind: ``binary`` (BCE with logits), ``multiclass`` (cross-entropy),
            ``segmentation`` (cross-entropy averaged over the sample's
            non-void pixels), ``depth`` (L1 over pixels with target > 0) or
            ``normals`` (1 − cosine between the normalised output and the
            target over pixels whose target is not all-zero).
        output: head output, see the module table.
        target: labels, see the module table.

    Returns:
        Tensor of shape (N,), differentiable w.r.t. ``output``. A sample with
        no valid pixel gets 0 (and no gradient).

    Raises:
        ConfigError: unknown ``kind`` (the message lists the kinds).
        ValueError: shapes that do not fit (the message gives both).
    """
    output, target = check_task_pair(kind, output, target)
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(output, target.to(output.dtype), reduction="none")
    if kind == "multiclass":
        return F.cross_entropy(output, target.long(), reduction="none")
    if kind == "segmentation":
        target = target.long()
        per_pixel = F.cross_entropy(output, target, ignore_index=IGNORE_INDEX, reduction="none")
        return _masked_mean(per_pixel, target != IGNORE_INDEX)
    target = target.to(output.dtype)
    if kind == "depth":
        return _masked_mean((output - target).abs(), target > 0)
    # normals: the head is not normalised; normalise both (a resized target is
    # no longer exactly unit length). F.normalize maps an all-zero vector to 0.
    valid = (target != 0).any(dim=1)
    cosine = (F.normalize(output, dim=1) * F.normalize(target, dim=1)).sum(dim=1)
    return _masked_mean(1.0 - cosine, valid)
