"""The baselines' training steps, run by the same :class:`~.loop.Trainer` as MetaMorphosis.

Every baseline publishes one shared feature map for all tasks (identity
modules, like ``universal``), so the audit, the service and ``load_producer``
treat their run dirs exactly as any other. What differs is how the encoder
is trained; the extra models that only training needs (an adversary decoder,
teachers, adaptors) live in :class:`Auxiliary` and are checkpointed with the
run but not published.

* ``deepobfuscator`` (Li et al., IoTDI 2021): adversarial training. Each step
  the adversaries (a reconstruction decoder and each private attribute's
  classifier) first fit the detached features; then the encoder minimises
  the task losses (gradients from the consumers, as in split learning) plus
  ``reconstruction_weight`` × SSIM(x, D(E(x))) plus ``attribute_weight`` ×
  the negative entropy of each adversary classifier. Both adversarial terms
  are bounded (SSIM ≤ 1, entropy ≤ log K), where maximising the adversaries'
  raw losses would diverge.
* ``kd-mtl`` (Li & Bilen, ECCV-W 2020): phase ``teachers`` trains one
  single-task network (encoder + head) per public task; phase ``student``
  trains the shared encoder on every task loss plus ``distill_weight`` × the
  squared L2 distance between ``A_t(E(x))`` and teacher ``t``'s features,
  both normalised over channels at each location, for a per-task 1×1
  adaptor ``A_t``; the teachers stay frozen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, LabelSpec
from ..errors import ConfigError
from ..losses.ssim import ssim_per_sample
from ..losses.tasks import task_loss
from ..models.decoders import ReconstructionDecoder
from ..models.producer import build_network
from .split import ConsumerLike, StepResult

__all__ = [
    "Auxiliary",
    "Teacher",
    "build_auxiliary",
    "deepobfuscator_step",
    "distill_step",
    "prediction_entropy",
    "teachers_step",
]

DECODER_WIDTH = 64  # the adversary decoder's stem width (the audit's attacker uses more)


class Teacher(nn.Module):
    """A single-task network of KD-MTL: its own encoder and head."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images))


class Auxiliary(nn.Module):
    """Training-only models of a method, with their optimisers (none for MetaMorphosis).

    ``models`` holds ``decoder`` (DeepObfuscator) or ``teachers`` and
    ``adaptors`` (KD-MTL, one per public task).
    """

    def __init__(self, models: nn.ModuleDict, optimizers: dict[str, torch.optim.Optimizer]):
        super().__init__()
        self.models = models
        self.optimizers = optimizers

    @property
    def decoder(self) -> nn.Module:
        return self.models["decoder"]

    @property
    def teachers(self) -> dict[str, Teacher]:
        return {
            name: cast(Teacher, t)
            for name, t in cast(nn.ModuleDict, self.models["teachers"]).items()
        }

    def adaptor(self, task: str) -> nn.Module:
        return cast(nn.ModuleDict, self.models["adaptors"])[task]

    def optimizer_states(self) -> dict[str, dict]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_states(self, states: Mapping[str, dict]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(states[name])


def _adam(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(module.parameters(), lr=lr)


def build_auxiliary(
    config: Config, input_shape: tuple[int, int, int], feature_shape: tuple[int, int, int]
) -> Auxiliary:
    """The extra models ``config.method`` trains (empty for the others)."""
    models = nn.ModuleDict()
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if config.method == "deepobfuscator":
        dense = [s.name for s in config.private_attributes if s.is_dense]
        if dense:
            raise ConfigError(
                f"method='deepobfuscator' needs classification private attributes; {dense} "
                "are dense"
            )
        channels, height, width = feature_shape
        decoder = ReconstructionDecoder(
            channels, (height, width), input_shape[1:], width=DECODER_WIDTH
        )
        models["decoder"] = decoder
        optimizers["decoder"] = _adam(decoder, config.deepobfuscator.adversary_lr)
    elif config.method == "kd-mtl":
        teachers, adaptors = nn.ModuleDict(), nn.ModuleDict()
        hw = (input_shape[1], input_shape[2])
        for spec in config.tasks:
            network = build_network(config)
            teachers[spec.name] = Teacher(network.encoder, network.make_head(spec, hw))
            adaptor = nn.Conv2d(feature_shape[0], feature_shape[0], kernel_size=1)
            nn.init.dirac_(adaptor.weight)  # start as the identity: aligned if already alike
            nn.init.zeros_(cast(Tensor, adaptor.bias))
            adaptors[spec.name] = adaptor
            optimizers[f"teacher/{spec.name}"] = _adam(teachers[spec.name], config.train.lr)
        models["teachers"] = teachers
        models["adaptors"] = adaptors
    return Auxiliary(models, optimizers)


def prediction_entropy(kind: str, logits: Tensor) -> Tensor:
    """Per-sample entropy (nats) of a classifier's predicted distribution."""
    if kind == "binary":
        p = torch.sigmoid(logits.reshape(logits.shape[0]))
        return F.binary_cross_entropy(p, p, reduction="none")  # −p log p − (1−p) log(1−p)
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def deepobfuscator_step(
    producer: nn.Module,
    optimizer: torch.optim.Optimizer,
    auxiliary: Auxiliary,
    images: Tensor,
    targets: Mapping[str, Tensor],
    consumers: Mapping[str, ConsumerLike],
    tasks: Sequence[LabelSpec],
    private: Sequence[LabelSpec],
    private_heads: Mapping[str, nn.Module] | nn.ModuleDict,
    *,
    pixels: Tensor,
    reconstruction_weight: float,
    attribute_weight: float,
) -> StepResult:
    """One DeepObfuscator step: adversaries fit the features, then the encoder fools them.

    ``pixels`` are ``images`` in pixel range [0, 1], what the adversary decoder
    (sigmoid output) reconstructs and SSIM compares. The private attributes'
    consumers are the adversary classifiers (their heads, ``private_heads``,
    train on detached features like any consumer); the encoder never sees
    their labels, only their predictions' entropy.
    """
    decoder = auxiliary.decoder
    decoder_optimizer = auxiliary.optimizers["decoder"]
    names = [s.name for s in (*tasks, *private)]
    shared = producer(images, names=names)[names[0]]  # identity modules: one map for all
    losses: dict[str, float] = {}
    # 1. the adversaries
    recon_loss = F.mse_loss(decoder(shared.detach()), pixels)
    decoder_optimizer.zero_grad(set_to_none=True)
    recon_loss.backward()
    decoder_optimizer.step()
    losses["adversary_reconstruction"] = float(recon_loss.detach())
    for spec in private:
        reply = consumers[spec.name].step(shared.detach(), targets[spec.name])
        losses[f"adversary_{spec.name}"] = reply.loss
    # 2. the encoder: task gradients from the consumers, adversarial terms here
    replies = {s.name: consumers[s.name].step(shared, targets[s.name]) for s in tasks}
    losses.update({name: reply.loss for name, reply in replies.items()})
    recon_similarity = ssim_per_sample(decoder(shared), pixels, data_range=1.0).mean()
    entropy = sum(prediction_entropy(s.kind, private_heads[s.name](shared)).mean() for s in private)
    adversarial = reconstruction_weight * recon_similarity - attribute_weight * entropy
    grads = [reply.grad for reply in replies.values()]
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(
        [shared] * len(grads) + [adversarial], [*grads, torch.ones_like(adversarial)]
    )
    optimizer.step()
    losses["reconstruction_ssim"] = float(recon_similarity.detach())
    return StepResult(
        losses=losses, privacy_term=float(adversarial.detach()), batch_size=len(images)
    )


def teachers_step(
    auxiliary: Auxiliary,
    images: Tensor,
    targets: Mapping[str, Tensor],
    tasks: Sequence[LabelSpec],
) -> StepResult:
    """One step of every single-task teacher (KD-MTL phase 1)."""
    losses: dict[str, float] = {}
    for spec in tasks:
        teacher = auxiliary.teachers[spec.name]
        optimizer = auxiliary.optimizers[f"teacher/{spec.name}"]
        loss = task_loss(spec.kind, teacher(images), targets[spec.name]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[f"teacher_{spec.name}"] = float(loss.detach())
    return StepResult(losses=losses, privacy_term=0.0, batch_size=len(images))


def _channel_normalised(features: Tensor) -> Tensor:
    return F.normalize(features, dim=1)


def distill_step(
    producer: nn.Module,
    optimizer: torch.optim.Optimizer,
    auxiliary: Auxiliary,
    images: Tensor,
    targets: Mapping[str, Tensor],
    consumers: Mapping[str, ConsumerLike],
    tasks: Sequence[LabelSpec],
    *,
    distill_weight: float,
) -> StepResult:
    """One KD-MTL student step on every label in ``tasks``, distilled from each teacher.

    ``optimizer`` holds the encoder's and the adaptors' parameters.
    """
    names = [s.name for s in tasks]
    shared = producer(images, names=names)[names[0]]
    replies = {s.name: consumers[s.name].step(shared, targets[s.name]) for s in tasks}
    distances = []
    for name, teacher in auxiliary.teachers.items():  # the public tasks
        with torch.no_grad():
            target = _channel_normalised(teacher.encoder(images))
        aligned = _channel_normalised(auxiliary.adaptor(name)(shared))
        distances.append((aligned - target).pow(2).sum(dim=1).mean())
    distill = distill_weight * torch.stack(distances).sum()
    grads = [reply.grad for reply in replies.values()]
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward([shared] * len(grads) + [distill], [*grads, torch.ones_like(distill)])
    optimizer.step()
    losses = {name: reply.loss for name, reply in replies.items()}
    losses["distill"] = float(distill.detach())
    return StepResult(losses=losses, privacy_term=float(distill.detach()), batch_size=len(images))
