"""``method: censor``: adversarial censoring against an ensemble of restarted adversaries.

The paper's method (a module per task, phases from ``privacy.mode``, the SSIM
term where the phase has ω) plus a censoring term. For each public task T and
each censored label A (every private attribute; with ``tasks: true`` also every
other public task), ``adversaries`` small classifiers learn to predict A from
T's released features. The producer's term, weight λ, pushes every adversary's
predicted class distribution p(x) towards the class prior π_A of the train
split: per sample, Σ_c (p_c − π_c)² averaged over (T, A, adversary). The
distance is bounded (≤ 2) where maximising the adversaries' own losses would
diverge, and the target is "no better than guessing the base rate", not
"confidently wrong", which would itself reveal A.

**Ensemble and restarts.** Censoring against one adversary teaches the
features to hide from that adversary only: a fresh one trained on them still
recovers the attribute (Song & Shmatikov, "Overlearning reveals sensitive
attributes", ICLR 2020). So, as in Wu et al. ("Towards privacy-preserving
visual recognition via adversarial training", ECCV 2018), there are K
adversaries per (T, A) and each is re-initialised (fresh weights, empty Adam
state) every ``reset_every`` steps, staggered so that at any time most of the
ensemble is trained: adversary k restarts when
``(step + k · reset_every // K) % reset_every == 0``.

**DP validity.** One step is: (1) the producer's step, the split-learning step
of :func:`~..split.producer_step` with the censoring term's gradient added to
each public task's feature-gradient, computed with the adversaries' weights as
they were before this batch; (2) then each adversary takes one Adam step on the
batch's *detached* features; (3) then the adversaries whose turn it is restart.
The term is a mean of per-sample distances under fixed weights, so sample i's
producer gradient depends on sample i alone and DP-SGD may train it. Like the
consumers' heads, the adversaries (and the priors) are fitted on the labels
outside the accountant: ε bounds the producer's clipped, noised updates.

With one shared feature map for every label (``privacy.mode: none``), the
private attributes' heads still train on the features but send no gradient to
the producer: it is not taught what it censors.

What it does not promise: the term only fools classifiers of the ensemble's
architecture, on training batches. A differently built attacker may still
recover the attributes; the audit's best attacker is the judge of what the
released features leak.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
from torch import Tensor, nn

from ...config import LabelSpec, check_int, check_positive
from ...errors import ConfigError
from ...losses.tasks import task_loss
from ..split import ConsumerLike, ConsumerReply, StepResult, producer_step
from .base import MethodContext, PhasePlan, StepInputs, TrainingState
from .metamorphosis import MetaMorphosis
from .registry import METHODS

__all__ = [
    "Censor",
    "CensorAdversary",
    "CensorOptions",
    "prior_distance",
    "reset_due",
]

ADVERSARY_WIDTH = 32  # channels of an adversary's convolutions (the audit's attackers use more)


@dataclass(frozen=True)
class CensorOptions:
    """The ``censor:`` section.

    ``weight`` is λ; ``adversaries`` the ensemble size K per (task, label);
    ``reset_every`` the steps between two restarts of one adversary;
    ``adversary_lr`` their Adam's learning rate; ``tasks`` also censors every
    other public task from each public task's features.
    """

    weight: float = 1.0
    adversaries: int = 3
    reset_every: int = 50
    adversary_lr: float = 1e-3
    tasks: bool = False

    def __post_init__(self) -> None:
        check_positive("censor.weight", self.weight, allow_zero=True)
        check_int("censor.adversaries", self.adversaries, minimum=1)
        check_int("censor.reset_every", self.reset_every, minimum=1)
        check_positive("censor.adversary_lr", self.adversary_lr)
        if not isinstance(self.tasks, bool):  # YAML "yes" is a bool, a string is not
            raise ConfigError(f"censor.tasks={self.tasks!r} is invalid: expected true or false")


class CensorAdversary(nn.Module):
    """A small classifier of one label from a feature map (GroupNorm: no batch statistics)."""

    def __init__(self, channels: int, outputs: int, width: int = ADVERSARY_WIDTH) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=3, padding=1),
            nn.GroupNorm(8, width),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=1),
            nn.GroupNorm(8, width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, outputs),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.body(features)

    def reinitialise(self) -> None:
        """Fresh random weights, as a newly built adversary gets."""
        for layer in self.body:
            reset = getattr(layer, "reset_parameters", None)
            if reset is not None:
                reset()


class _StepCounter(nn.Module):
    """The adversaries' steps so far: a buffer, so a resumed run continues the schedule."""

    steps: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def prior_distance(kind: str, logits: Tensor, prior: Tensor) -> Tensor:
    """Per-sample Σ_c (p_c − π_c)² between predicted and prior class distributions (≤ 2).

    A binary label's single logit z gives the distribution [1 − σ(z), σ(z)].
    """
    if kind == "binary":
        positive = torch.sigmoid(logits.reshape(logits.shape[0]))
        probabilities = torch.stack([1 - positive, positive], dim=1)
    else:
        probabilities = torch.softmax(logits, dim=1)
    return (probabilities - prior).pow(2).sum(dim=1)


def reset_due(index: int, step: int, adversaries: int, reset_every: int) -> bool:
    """Whether adversary ``index`` of ``adversaries`` restarts after step ``step`` (1-based)."""
    return (step + index * reset_every // adversaries) % reset_every == 0


class _CensoredConsumer:
    """Task T's consumer, whose feature-gradient gains the censoring term's.

    The term of T's features depends on them alone (not on the producer's
    weights directly), so adding its gradient to the consumer's is the same
    backward pass as adding the term to the producer's loss.
    """

    def __init__(self, consumer: ConsumerLike, term: Callable[[Tensor], Tensor]) -> None:
        self.consumer = consumer
        self.term = term
        self.features: Tensor | None = None  # this step's, detached: the adversaries' input
        self.value = 0.0

    def step(self, features: Tensor, target: Tensor, *, update: bool = True) -> ConsumerReply:
        reply = self.consumer.step(features, target, update=update)
        self.features = features.detach()
        leaf = features.detach().requires_grad_(True)
        term = self.term(leaf)
        # the gradient w.r.t. the features only: the adversaries' own weights stay untouched
        (grad,) = torch.autograd.grad(term, leaf)
        self.value = float(term.detach())
        return ConsumerReply(grad=reply.grad + grad, loss=reply.loss)


class _SilentConsumer:
    """A head that trains on the features but sends the producer no gradient."""

    def __init__(self, consumer: ConsumerLike) -> None:
        self.consumer = consumer

    def step(self, features: Tensor, target: Tensor, *, update: bool = True) -> ConsumerReply:
        reply = self.consumer.step(features, target, update=update)
        return ConsumerReply(grad=torch.zeros_like(reply.grad), loss=reply.loss)


@METHODS.register("censor")
class Censor(MetaMorphosis):
    """The paper's method plus censoring against restarted adversary ensembles."""

    name = "censor"
    Options = CensorOptions

    @property
    def remote(self) -> bool:  # type: ignore[override]
        """Not with ``tasks: true``: the producer reads the public tasks' labels, which in
        split learning only their consumers hold (a class flag elsewhere, a property here
        because it depends on the options)."""
        return not self.options.tasks

    def check(self) -> None:
        config = self.config
        dense = [f"{s.name} ({s.kind})" for s in config.private_attributes if s.is_dense]
        if dense:
            raise ConfigError(
                f"method='censor' censors with classifier adversaries, but private "
                f"attribute(s) {', '.join(dense)} are dense: name binary or multiclass ones"
            )
        if self.options.tasks and config.module_kind == "identity":
            raise ConfigError(
                f"censor.tasks=true censors each public task from the others' features, but "
                f"with privacy.mode={config.privacy.mode!r} every task shares one feature map: "
                "set censor.tasks=false or privacy.mode to task, input or both"
            )
        if not self.censored_labels():
            raise ConfigError(
                "method='censor' has nothing to censor: name a binary or multiclass private "
                "attribute in private_attributes, or set censor.tasks=true with two or more "
                "classification tasks"
            )

    def censored_labels(self) -> dict[str, tuple[LabelSpec, ...]]:
        """Public task → the labels its features are censored of (tasks with none left out)."""
        config = self.config
        private = [s for s in config.private_attributes if not s.is_dense]
        result = {}
        for task in config.tasks:
            others = [s for s in config.tasks if s.name != task.name and not s.is_dense]
            labels = (*private, *(others if self.options.tasks else ()))
            if labels:
                result[task.name] = labels
        return result

    # -- the training state -------------------------------------------------------------
    def build_state(self, context: MethodContext) -> TrainingState:
        """K adversaries (each with its Adam) per (public task, censored label), and the
        step counter of their restarts."""
        options = self.options
        channels = context.feature_shape[0]  # released maps keep the module's channels
        self.specs: dict[str, LabelSpec] = {}
        adversaries = nn.ModuleDict()
        optimizers: dict[str, torch.optim.Optimizer] = {}
        for task, labels in self.censored_labels().items():
            by_label = nn.ModuleDict()
            for spec in labels:
                self.specs[spec.name] = spec
                ensemble = nn.ModuleList(
                    CensorAdversary(channels, spec.num_outputs) for _ in range(options.adversaries)
                )
                for k, adversary in enumerate(ensemble):
                    optimizers[_key(task, spec.name, k)] = torch.optim.Adam(
                        adversary.parameters(), lr=options.adversary_lr
                    )
                by_label[spec.name] = ensemble
            adversaries[task] = by_label
        self.priors = {name: _prior(context.class_priors, name) for name in self.specs}
        models = nn.ModuleDict({"adversaries": adversaries, "schedule": _StepCounter()})
        self.state = TrainingState(models, optimizers)
        return self.state

    def ensembles(self, task: str) -> dict[str, nn.ModuleList]:
        """Censored label → the K adversaries reading ``task``'s features."""
        by_task = cast(nn.ModuleDict, self.state.models["adversaries"])
        by_label = cast(nn.ModuleDict, by_task[task])
        return {name: cast(nn.ModuleList, e) for name, e in by_label.items()}

    @property
    def steps(self) -> int:
        """Adversary steps taken so far (what the restart schedule counts)."""
        return int(cast(_StepCounter, self.state.models["schedule"]).steps)

    # -- the step -------------------------------------------------------------------------
    def step(self, phase: PhasePlan, inputs: StepInputs) -> StepResult:
        """The producer's step against the current adversaries, then theirs, then restarts.

        Phases that train no public task's module (mode ``both``'s encoder phase)
        take the paper's step unchanged.
        """
        by_task = cast(nn.ModuleDict, self.state.models["adversaries"])
        censored = [name for name in phase.labels if name in by_task]
        share = self.options.weight / max(self._count(censored), 1)
        censoring = {
            task: _CensoredConsumer(
                inputs.consumers[task], partial(self._task_term, task, share=share)
            )
            for task in censored
        }
        privacy = self.config.privacy
        result = producer_step(
            inputs.model,
            inputs.optimizer,
            inputs.images,
            inputs.targets,
            {**inputs.consumers, **self._silenced(phase, inputs.consumers), **censoring},
            phase.labels,
            compared=phase.compared,
            omega=phase.omega,
            similarity=privacy.similarity,
            data_range=privacy.ssim_data_range,
        )
        result.terms["censor_term"] = float(sum(c.value for c in censoring.values()))
        if censored:
            features = {task: cast(Tensor, c.features) for task, c in censoring.items()}
            result.losses.update(self._train_adversaries(features, inputs.targets))
            self._restart_due()
        return result

    def per_sample_term(self, features: Mapping[str, Tensor]) -> Tensor:
        """Per-sample censoring distance: its mean over every (task, label, adversary) of
        the tasks in ``features`` (λ not applied)."""
        distances = [self._distances(task, g) for task, g in features.items()]
        return torch.cat(distances).mean(dim=0)

    def _count(self, tasks: list[str]) -> int:
        return sum(len(self.ensembles(t)) for t in tasks) * self.options.adversaries

    def _distances(self, task: str, features: Tensor) -> Tensor:
        """``(adversaries of task, N)`` per-sample distances to each label's prior."""
        rows = []
        for name, ensemble in self.ensembles(task).items():
            prior = self.priors[name].to(features)
            kind = self.specs[name].kind
            rows += [prior_distance(kind, adversary(features), prior) for adversary in ensemble]
        return torch.stack(rows)

    def _task_term(self, task: str, features: Tensor, *, share: float) -> Tensor:
        """Task T's part of λ × the batch mean of :meth:`per_sample_term` over the phase."""
        return share * self._distances(task, features).sum(dim=0).mean()

    def _silenced(
        self, phase: PhasePlan, consumers: Mapping[str, ConsumerLike]
    ) -> dict[str, ConsumerLike]:
        """With one shared map, the private heads must not teach it what it censors."""
        if self.config.module_kind != "identity":
            return {}
        private = {spec.name for spec in self.config.private_attributes}
        return {n: _SilentConsumer(consumers[n]) for n in phase.labels if n in private}

    def _train_adversaries(
        self, features: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> dict[str, float]:
        """One Adam step of every adversary on the detached features; mean loss per label."""
        losses: dict[str, list[float]] = {}
        for task, detached in features.items():
            for name, ensemble in self.ensembles(task).items():
                for k, adversary in enumerate(ensemble):
                    optimizer = self.state.optimizers[_key(task, name, k)]
                    kind = self.specs[name].kind
                    loss = task_loss(kind, adversary(detached), targets[name]).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.setdefault(f"adversary_{name}", []).append(float(loss.detach()))
        return {key: sum(values) / len(values) for key, values in losses.items()}

    def _restart_due(self) -> None:
        """Count the step; re-initialise the adversaries whose turn it is."""
        counter = cast(_StepCounter, self.state.models["schedule"])
        counter.steps += 1
        options = self.options
        by_task = cast(nn.ModuleDict, self.state.models["adversaries"])
        for task in by_task:
            for name, ensemble in self.ensembles(task).items():
                for k, adversary in enumerate(ensemble):
                    if reset_due(k, self.steps, options.adversaries, options.reset_every):
                        cast(CensorAdversary, adversary).reinitialise()
                        self.state.optimizers[_key(task, name, k)].state.clear()


def _key(task: str, label: str, index: int) -> str:
    return f"{task}/{label}/{index}"


def _prior(priors: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in priors:
        raise ConfigError(
            f"method='censor' needs the train split's class prior of {name!r}; "
            "the trainer gave none (MethodContext.class_priors)"
        )
    return priors[name].detach().float()
