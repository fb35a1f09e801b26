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

Under ``privacy.private_heads`` each step of a DP phase carries its head's DP-SGD
settings (:class:`~metamorphosis.privacy.engine.HeadDP`: the block noise, the
clipping bound, the expected batch), and the consumer's :class:`ConsumerSide` steps
its head with exactly that DP-SGD step, as the in-process trainer would: the
producer's accountant then counts the consumer's head too. The producer cannot
check that a consumer did so; ``run.json``'s scope says which heads were remote.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from ..config import Config, LabelSpec, is_finite_number
from ..data import LabelledImageDataset, build_datasets
from ..errors import ConfigError, MetaMorphosisError
from ..models.producer import build_heads, build_network, build_producer
from ..privacy.engine import DPEngine, HeadDP, dp_sgd_head
from .methods import Method
from .optimizers import make_optimizer
from .split import Consumer, ConsumerReply

__all__ = [
    "check_remote_method",
    "ConsumerSide",
    "PendingStep",
    "RemoteConsumer",
    "RemoteTimeout",
    "StaleStep",
    "TrainingHub",
    "consumer_head",
    "remote_consumer",
    "head_dp_from_text",
    "head_dp_to_text",
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
    dp: HeadDP | None = None  # the head's DP-SGD step (privacy.private_heads), or none
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
    def publish(self, task: str, features: Tensor, dp: HeadDP | None = None) -> PendingStep:
        step = PendingStep(
            step_id=f"{task}-{next(self._counter)}",
            task=task,
            ids=list(self.current_ids),
            features=features.detach().to("cpu", torch.float32).contiguous(),
            dp=dp,
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
        self.dp: HeadDP | None = None  # set by the trainer for a DP phase's steps

    def step(self, features: Tensor, target: Tensor, *, update: bool = True) -> ConsumerReply:
        """Publish the features, wait for the consumer's gradient (``target`` stays unused:
        the consumer holds its own labels and finds them by item id)."""
        del target, update
        grad, loss = self.hub.wait(self.hub.publish(self.spec.name, features, self.dp))
        return ConsumerReply(grad=grad.to(features.device, features.dtype), loss=loss)


class ConsumerSide:
    """A remote consumer's head step, on DP-SGD whenever the producer's step says so.

    Args:
        consumer: the consumer's head, optimiser and loss.
        require_dp: refuse a step without DP-SGD settings (the consumer's config has
            ``privacy.private_heads``, whose every phase is DP: a step without them
            means the producer is not training that config).
    """

    def __init__(self, consumer: Consumer, *, require_dp: bool = False) -> None:
        self.consumer = consumer
        self.require_dp = require_dp
        self.dp_steps = 0  # steps taken with DP-SGD
        self._plain: tuple[nn.Module, torch.optim.Optimizer] | None = None  # while on DP-SGD
        self._dp: HeadDP | None = None

    @property
    def head(self) -> nn.Module:
        """The head itself (without the per-sample wrapper)."""
        return self.consumer.head if self._plain is None else self._plain[0]

    def step(self, features: Tensor, target: Tensor, dp: HeadDP | None) -> ConsumerReply:
        """One head step, with the DP-SGD settings ``dp`` (None: plain)."""
        if dp is None and self.require_dp:
            raise MetaMorphosisError(
                "the producer sent a training step without DP-SGD settings, but this "
                "consumer's config has privacy.private_heads=true: is it training the same "
                "config?"
            )
        self._use(dp)
        self.dp_steps += dp is not None
        return self.consumer.step(features, target)

    def finish(self) -> nn.Module:
        """Take the per-sample wrapper off; the trained head."""
        self._use(None)
        return self.head

    def _use(self, dp: HeadDP | None) -> None:
        if dp == self._dp:
            return
        if self._plain is not None:  # off DP-SGD first (or on with other settings)
            DPEngine.unwrap(self.consumer.head)  # the per-sample hooks off
            self.consumer.head, self.consumer.optimizer = self._plain
            self._plain = None
        if dp is not None:
            self._plain = (self.consumer.head, self.consumer.optimizer)
            self.consumer.head, self.consumer.optimizer = dp_sgd_head(*self._plain, dp)
        self._dp = dp


def head_dp_to_text(dp: HeadDP) -> str:
    """``dp`` as the JSON a training step's metadata carries under ``dp``."""
    return json.dumps(dataclasses.asdict(dp))


def head_dp_from_text(text: str | None) -> HeadDP | None:
    """A training step's ``dp`` metadata (None: absent), each value checked."""
    if text is None:
        return None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise MetaMorphosisError(f"a training step's 'dp' metadata is not JSON: {exc}") from exc
    fields = [f.name for f in dataclasses.fields(HeadDP)]
    if not isinstance(raw, dict) or sorted(raw) != sorted(fields):
        raise MetaMorphosisError(
            f"a training step's 'dp' metadata must have exactly {fields}, got {text[:200]!r}"
        )
    rules = {
        "noise_multiplier": lambda v: v >= 0,
        "max_grad_norm": lambda v: v > 0,
        "expected_batch_size": lambda v: v >= 1 and float(v).is_integer(),
    }
    for name, rule in rules.items():
        value = raw[name]
        if not (is_finite_number(value) and rule(value)):
            raise MetaMorphosisError(f"a training step's dp.{name} is out of range: {value!r}")
    return HeadDP(
        float(raw["noise_multiplier"]),
        float(raw["max_grad_norm"]),
        int(raw["expected_batch_size"]),
    )


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


def remote_consumer(
    config: Config, task: str, *, data_root: str | Path | None = None
) -> tuple[ConsumerSide, Callable[[list[str]], Tensor]]:
    """``task``'s consumer in ``train --remote`` of ``config``: its side of each step (the
    head as the producer's trainer initialises it, on DP-SGD under
    ``privacy.private_heads``) and its own labels by item id."""
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed, root=data_root)
    config = config.with_label_classes(data.num_classes)
    spec = next((s for s in config.tasks if s.name == task), None)
    if spec is None:
        raise ConfigError(f"task {task!r} is not a public task of this config")
    head = consumer_head(config, data.input_shape, task)
    train = config.train
    optimizer = make_optimizer(
        train.optimizer, list(head.parameters()), train.head_lr or train.lr, train.weight_decay
    )
    train_split = cast(LabelledImageDataset, data.train)

    def labels_of(ids: list[str]) -> Tensor:
        return torch.stack([train_split.get_item_by_id(i)[1][task] for i in ids])

    consumer = Consumer(spec, head, optimizer)
    return ConsumerSide(consumer, require_dp=config.privacy.private_heads), labels_of
