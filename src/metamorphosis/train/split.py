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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ..config import LabelSpec
from ..losses import task_loss, task_privacy_loss

__all__ = [
    "Consumer",
    "ConsumerLike",
    "ConsumerReply",
    "ExtraTerms",
    "StepResult",
    "producer_step",
    "unwrapped",
]


#: A method's extra loss terms: features by name → weighted scalar terms by name.
ExtraTerms = Callable[[Mapping[str, Tensor]], Mapping[str, Tensor]]


def unwrapped(model: nn.Module) -> nn.Module:
    """The producer inside its Opacus wrappers (``GradSampleModule``'s ``_module``,
    ``DPDDP``'s ``module`` under torchrun); the model itself when not wrapped."""
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    model = getattr(model, "_module", model)
    return model.module if isinstance(model, DPDDP) else model


def _bottleneck_kl(producer: nn.Module, names: Sequence[str]) -> Tensor | None:
    kl_term = getattr(unwrapped(producer), "kl_term", None)
    return kl_term(names) if kl_term is not None else None


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
    extra_terms: ExtraTerms | None = None,
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
        extra_terms: a method's own loss terms: given the features by name, the
            weighted scalar terms by name (logged under those names). In a DP phase
            each must be a mean of per-sample values.
    """
    features = producer(images, names=[*names, *(n for n in compared if n not in names)])
    replies = {name: consumers[name].step(features[name], targets[name]) for name in names}
    roots = [features[name] for name in names]
    grads = [replies[name].grad for name in names]
    scalars: dict[str, Tensor] = {}
    kl = _bottleneck_kl(producer, names)
    if kl is not None:  # the bottlenecks' β·KL, a per-sample term like the SSIM one
        scalars["kl_term"] = kl.mean()
    if omega > 0 and len(features) >= 2:
        per_sample = task_privacy_loss(
            features, omega=omega, similarity=similarity, data_range=data_range
        )
        scalars["ssim_term"] = per_sample.mean()
    if extra_terms is not None:
        scalars.update(extra_terms(features))
    roots += list(scalars.values())
    grads += [torch.ones_like(term) for term in scalars.values()]
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(roots, grads)
        optimizer.step()
    terms = {"ssim_term": 0.0, **{name: float(term.detach()) for name, term in scalars.items()}}
    return StepResult(
        losses={name: reply.loss for name, reply in replies.items()},
        terms=terms,
        batch_size=int(images.shape[0]),
    )
