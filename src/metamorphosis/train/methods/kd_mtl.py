"""``method: kd-mtl`` (Li & Bilen, ECCV-W 2020): distil single-task teachers into one map.

Phase ``teachers`` trains one single-task network (encoder + head) per public
task; phase ``student`` trains the shared encoder on every task loss plus
``distill_weight`` × the squared L2 distance between ``A_t(E(x))`` and teacher
``t``'s features, both normalised over channels at each location, for a
per-task 1×1 adaptor ``A_t``; the teachers stay frozen. One shared feature map
for every task (identity modules).

Not DP-valid: the teachers train on the same images without DP and the
student learns from them, so ε would not bound what the producer's weights
reveal. Not with remote consumers either: the teachers need the task labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import check_int, check_positive
from ...losses.tasks import task_loss
from ...models.producer import build_network
from ..split import StepResult
from .base import Method, MethodContext, PhasePlan, StepInputs, TrainingState
from .registry import METHODS

__all__ = ["KDMTL", "KDMTLOptions", "Teacher"]


@dataclass(frozen=True)
class KDMTLOptions:
    """The ``kd_mtl:`` section; ``teacher_epochs`` defaults to ``train.epochs``."""

    teacher_epochs: int | None = None
    distill_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.teacher_epochs is not None:
            check_int("kd_mtl.teacher_epochs", self.teacher_epochs, minimum=1)
        check_positive("kd_mtl.distill_weight", self.distill_weight, allow_zero=True)


class Teacher(nn.Module):
    """A single-task network of KD-MTL: its own encoder and head."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images))


def _channel_normalised(features: Tensor) -> Tensor:
    return F.normalize(features, dim=1)


@METHODS.register("kd-mtl")
class KDMTL(Method):
    """Single-task teachers, then a multi-task student aligned to each of them."""

    name = "kd-mtl"
    Options = KDMTLOptions
    remote = False
    per_sample = False
    not_per_sample_because = (
        "its teachers train on the same images without DP and the student learns from "
        "them, so epsilon would not bound the producer"
    )

    def check(self) -> None:
        self.require_one_shared_map()

    def phases(self) -> list[PhasePlan]:
        config = self.config
        train = config.train
        public = tuple(spec.name for spec in config.tasks)
        everyone = tuple(spec.name for spec in config.all_labels)
        teacher_epochs = self.options.teacher_epochs or train.epochs
        return [
            PhasePlan("teachers", public, False, False, 0.0, teacher_epochs),
            PhasePlan("student", everyone, True, config.privacy.uses_dp, 0.0, train.epochs),
        ]

    def build_state(self, context: MethodContext) -> TrainingState:
        config = self.config
        teachers, adaptors = nn.ModuleDict(), nn.ModuleDict()
        optimizers: dict[str, torch.optim.Optimizer] = {}
        hw = (context.input_shape[1], context.input_shape[2])
        channels = context.feature_shape[0]
        for spec in config.tasks:
            network = build_network(config)
            teachers[spec.name] = Teacher(network.encoder, network.make_head(spec, hw))
            adaptor = nn.Conv2d(channels, channels, kernel_size=1)
            nn.init.dirac_(adaptor.weight)  # start as the identity: aligned if already alike
            nn.init.zeros_(cast(Tensor, adaptor.bias))
            adaptors[spec.name] = adaptor
            optimizers[f"teacher/{spec.name}"] = torch.optim.Adam(
                teachers[spec.name].parameters(), lr=config.train.lr
            )
        models = nn.ModuleDict({"teachers": teachers, "adaptors": adaptors})
        self.state = TrainingState(models, optimizers)
        return self.state

    def _teachers(self) -> dict[str, Teacher]:
        teachers = cast(nn.ModuleDict, self.state.models["teachers"])
        return {name: cast(Teacher, t) for name, t in teachers.items()}

    def _adaptor(self, task: str) -> nn.Module:
        return cast(nn.ModuleDict, self.state.models["adaptors"])[task]

    def extra_parameters(self, phase: PhasePlan) -> list[nn.Parameter]:
        """The adaptors learn with the encoder they align."""
        if phase.name != "student":
            return []
        return [p for t in self.config.tasks for p in self._adaptor(t.name).parameters()]

    def validated_labels(self, phase: PhasePlan) -> tuple[str, ...]:
        return () if phase.name == "teachers" else phase.labels  # no head trains yet

    def step(self, phase: PhasePlan, inputs: StepInputs) -> StepResult:
        if phase.name == "teachers":
            return self._teachers_step(inputs)
        return self._student_step(phase, inputs)

    def _teachers_step(self, inputs: StepInputs) -> StepResult:
        """One step of every single-task teacher."""
        losses: dict[str, float] = {}
        for spec in self.config.tasks:
            teacher = self._teachers()[spec.name]
            optimizer = self.state.optimizers[f"teacher/{spec.name}"]
            loss = task_loss(spec.kind, teacher(inputs.images), inputs.targets[spec.name]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[f"teacher_{spec.name}"] = float(loss.detach())
        return StepResult(losses=losses, terms={}, batch_size=len(inputs.images))

    def _student_step(self, phase: PhasePlan, inputs: StepInputs) -> StepResult:
        """One student step on every label of the phase, distilled from each teacher.

        The optimiser holds the encoder's and the adaptors' parameters.
        """
        names = list(phase.labels)
        shared = inputs.model(inputs.images, names=names)[names[0]]
        replies = {n: inputs.consumers[n].step(shared, inputs.targets[n]) for n in names}
        distances = []
        for name, teacher in self._teachers().items():  # the public tasks
            with torch.no_grad():
                target = _channel_normalised(teacher.encoder(inputs.images))
            aligned = _channel_normalised(self._adaptor(name)(shared))
            distances.append((aligned - target).pow(2).sum(dim=1).mean())
        distill = self.options.distill_weight * torch.stack(distances).sum()
        grads = [reply.grad for reply in replies.values()]
        assert inputs.optimizer is not None  # the encoder always trains
        inputs.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(
            [shared] * len(grads) + [distill], [*grads, torch.ones_like(distill)]
        )
        inputs.optimizer.step()
        losses = {name: reply.loss for name, reply in replies.items()}
        losses["distill"] = float(distill.detach())
        return StepResult(
            losses=losses,
            terms={"distill_term": float(distill.detach())},
            batch_size=len(inputs.images),
        )
