"""One split-learning step, with the producer and its consumers kept apart.

The producer computes every requested label's features and hands each
consumer a *detached copy*; the consumer runs its head, computes its loss and
sends back only the gradient of that loss w.r.t. the features it received.
The producer then back-propagates those gradients (plus its own task-privacy
term) through its modules and encoder in one backward pass. Nothing but
features and feature-gradients crosses the boundary, which is what lets the
same step run over a network, and lets Opacus clip per-sample producer
gradients without ever seeing a consumer's labels or weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ..config import LabelSpec
from ..losses import task_loss, task_privacy_loss

__all__ = ["Consumer", "ConsumerLike", "ConsumerReply", "StepResult", "producer_step"]


@dataclass
class ConsumerReply:
    """What a consumer returns for one step: the gradient and its loss."""

    grad: Tensor
    loss: float


class ConsumerLike(Protocol):
    """Anything that answers features with ``d loss / d features``: a local consumer, or a
    stand-in for one in another process (:class:`~.remote.RemoteConsumer`)."""

    def step(self, features: Tensor, target: Tensor, *, update: bool = True) -> ConsumerReply: ...


class Consumer:
    """The consumer side of one task: a head, its optimiser and its loss.

    Losses are per-sample and averaged over the batch, so the gradient
    w.r.t. sample ``i``'s features depends on sample ``i`` alone (heads use
    GroupNorm, never batch statistics).
    """

    def __init__(self, spec: LabelSpec, head: nn.Module, optimizer: torch.optim.Optimizer):
        self.spec = spec
        self.head = head
        self.optimizer = optimizer

    def step(self, features: Tensor, target: Tensor, *, update: bool = True) -> ConsumerReply:
        """Train the head on ``features`` and return ``d loss / d features``."""
        features = features.detach().requires_grad_(True)
        self.head.train()
        per_sample = task_loss(self.spec.kind, self.head(features), target)
        loss = per_sample.mean() * self.spec.weight
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if update:
            self.optimizer.step()
        assert features.grad is not None
        return ConsumerReply(grad=features.grad.detach(), loss=float(loss.detach()))


@dataclass
class StepResult:
    """One step's losses (per label), its method's named loss terms, and its batch size.

    ``terms`` are logged under their names in ``metrics.jsonl`` (``ssim_term``,
    ``adversarial_term``, ``distill_term``, a new method's own).
    """

    losses: dict[str, float]
    terms: dict[str, float]
    batch_size: int


def producer_step(
    producer: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    images: Tensor,
    targets: Mapping[str, Tensor],
    consumers: Mapping[str, ConsumerLike],
    names: Sequence[str],
    *,
    compared: Sequence[str] = (),
    omega: float = 0.0,
    similarity: str = "ssim",
    data_range: float = 1.0,
) -> StepResult:
    """One split-learning step for the labels in ``names``.

    Args:
        producer: the :class:`~metamorphosis.models.producer.Producer`, or its
            Opacus ``GradSampleModule`` wrapper in a DP phase.
        optimizer: the producer's optimiser (a ``DPOptimizer`` in DP phases);
            None when no producer parameter trains (heads only).
        images: the batch.
        targets: labels by name (read only by the consumers).
        consumers: one :class:`Consumer` per name.
        names: the labels trained in this phase.
        compared: more labels whose (frozen) modules' features enter the
            task-privacy term but get no consumer step (adding a task).
        omega: weight of the task-privacy term ω·Σ_{i≠j} SSIM(g_i, g_j).
    """
    features = producer(images, names=[*names, *(n for n in compared if n not in names)])
    replies = {name: consumers[name].step(features[name], targets[name]) for name in names}
    roots = [features[name] for name in names]
    grads = [replies[name].grad for name in names]
    privacy_value = 0.0
    if omega > 0 and len(features) >= 2:
        per_sample = task_privacy_loss(
            features, omega=omega, similarity=similarity, data_range=data_range
        )
        privacy_term = per_sample.mean()
        privacy_value = float(privacy_term.detach())
        roots.append(privacy_term)
        grads.append(torch.ones_like(privacy_term))
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(roots, grads)
        optimizer.step()
    return StepResult(
        losses={name: reply.loss for name, reply in replies.items()},
        terms={"ssim_term": privacy_value},
        batch_size=int(images.shape[0]),
    )
