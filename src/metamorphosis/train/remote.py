"""Split learning with consumers in other processes: the producer's side, transport-free.

The trainer hands each public task's features to a :class:`RemoteConsumer`,
which publishes them on the :class:`TrainingHub` and blocks until that
task's consumer returns ``d loss / d features`` for exactly that step. The
HTTP layer (:mod:`metamorphosis.serve.training`) only moves bytes between
consumers and the hub. Rules the hub enforces:

* one step is pending per task at a time; a consumer that disconnects and
  comes back is offered the same step again until it is answered;
* a gradient for any other step id, or a second one for the same step, is a
  :class:`StaleStep` (409) and is never applied;
* a gradient must have the features' shape and be finite (422, checked by
  :func:`~metamorphosis.serve.codec.check_gradient` in the HTTP layer).

Consumers build their heads with :func:`consumer_head`, which replays the
in-process trainer's initialisation, so remote and in-process training of
the same config and seed follow the same trajectory.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import Config, LabelSpec
from ..errors import ConfigError, MetaMorphosisError
from ..models.producer import build_heads, build_network, build_producer
from .methods import Method
from .split import ConsumerReply

__all__ = [
    "check_remote_method",
    "PendingStep",
    "RemoteConsumer",
    "RemoteTimeout",
    "StaleStep",
    "TrainingHub",
    "consumer_head",
]


class StaleStep(MetaMorphosisError):
    """A gradient for a step that is not pending (replayed, stale or unknown)."""


class RemoteTimeout(MetaMorphosisError):
    """A consumer did not answer within the deadline and its retries."""


def check_remote_method(method: Method) -> None:
    """Refuse a training method that cannot keep the task labels with the consumers."""
    if not method.remote:
        raise ConfigError(
            f"method {method.name!r} cannot train with remote consumers: it needs the task "
            "labels on the producer; train it without --remote"
        )


@dataclass
class PendingStep:
    """One task's share of one training step, waiting for its gradient."""

    step_id: str
    task: str
    ids: list[str]
    features: Tensor
    answered: threading.Event = field(default_factory=threading.Event)
    grad: Tensor | None = None
    loss: float | None = None


class TrainingHub:
    """Steps offered to remote consumers and the gradients they send back.

    Args:
        tasks: the tasks whose consumers are remote.
        timeout: seconds to wait for one gradient before re-offering the step.
        retries: re-offers before the step (and the training) fails.
    """

    def __init__(self, tasks: Sequence[str], *, timeout: float = 60.0, retries: int = 3) -> None:
        self.tasks = list(tasks)
        self.timeout = timeout
        self.retries = retries
        self.state = "training"  # then "finishing" (heads requested), then "done"
        self.current_ids: list[str] = []
        self._lock = threading.Lock()
        self._pending: dict[str, PendingStep | None] = {t: None for t in self.tasks}
        self._counter = itertools.count()
        self._heads: dict[str, dict[str, Tensor]] = {}
        self._heads_ready = threading.Event()

    # -- producer side --------------------------------------------------------
    def publish(self, task: str, features: Tensor) -> PendingStep:
        step = PendingStep(
            step_id=f"{task}-{next(self._counter)}",
            task=task,
            ids=list(self.current_ids),
            features=features.detach().to("cpu", torch.float32).contiguous(),
        )
        with self._lock:
            self._pending[task] = step
        return step

    def wait(self, step: PendingStep) -> tuple[Tensor, float]:
        """The step's gradient and loss, re-offering it while the consumer is away."""
        for _ in range(self.retries + 1):
            if step.answered.wait(self.timeout):
                assert step.grad is not None and step.loss is not None
                return step.grad, step.loss
        raise RemoteTimeout(
            f"the consumer of {step.task!r} did not answer step {step.step_id} within "
            f"{self.retries + 1} × {self.timeout:g} s; the last epoch's checkpoint is kept"
        )

    def request_heads(self, timeout: float) -> dict[str, dict[str, Tensor]]:
        """Ask every consumer for its trained head (for the run's evaluation) and wait."""
        with self._lock:
            self.state = "finishing"
            self._check_heads()
        if not self._heads_ready.wait(timeout):
            missing = sorted(set(self.tasks) - set(self._heads))
            raise RemoteTimeout(f"no trained head from the consumers of {missing}")
        return dict(self._heads)

    def close(self) -> None:
        with self._lock:
            self.state = "done"

    # -- consumer side (called by the HTTP layer) ------------------------------
    def next_step(self, task: str) -> PendingStep | None:
        with self._lock:
            step = self._pending.get(task)
            return step if step is not None and not step.answered.is_set() else None

    def answer(self, task: str, step_id: str, grad: Tensor, loss: float) -> None:
        """Record a gradient; :class:`StaleStep` unless it answers the pending step."""
        with self._lock:
            step = self._pending.get(task)
            if step is None or step.step_id != step_id or step.answered.is_set():
                raise StaleStep(f"step {step_id!r} is not pending for task {task!r}")
            step.grad, step.loss = grad, float(loss)
            step.answered.set()

    def post_head(self, task: str, state: dict[str, Tensor]) -> None:
        with self._lock:
            if self.state != "finishing" or task in self._heads:
                raise StaleStep(f"no head is expected from {task!r} now")
            self._heads[task] = state
            self._check_heads()

    def _check_heads(self) -> None:
        if set(self._heads) >= set(self.tasks):
            self._heads_ready.set()


class RemoteConsumer:
    """Stands in for an in-process :class:`~.split.Consumer` of a remote task."""

    def __init__(self, spec: LabelSpec, hub: TrainingHub) -> None:
        self.spec = spec
        self.hub = hub

    def step(self, features: Tensor, target: Tensor, *, update: bool = True) -> ConsumerReply:
        """Publish the features, wait for the consumer's gradient (``target`` stays unused:
        the consumer holds its own labels and finds them by item id)."""
        del target, update
        grad, loss = self.hub.wait(self.hub.publish(self.spec.name, features))
        return ConsumerReply(grad=grad.to(features.device, features.dtype), loss=loss)


def consumer_head(config: Config, input_shape: tuple[int, int, int], task: str) -> nn.Module:
    """``task``'s head exactly as the in-process trainer initialises it for ``config``.

    The trainer seeds, builds the network, the producer and then every head;
    replaying that order gives the same random initial weights.
    """
    torch.manual_seed(config.train.seed)
    network = build_network(config)
    build_producer(config, network, input_shape)
    return build_heads(config.all_labels, network, input_shape, code_size=config.defence.code_size)[
        task
    ]
