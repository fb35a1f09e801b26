"""``method: deepobfuscator`` (Li et al., IoTDI 2021): adversarial training.

One shared feature map for every task (identity modules, like ``universal``).
Each step the adversaries (a reconstruction decoder and each private
attribute's classifier) first fit the detached features; then the encoder
minimises the task losses (gradients from the consumers, as in split
learning) plus ``reconstruction_weight`` × SSIM(x, D(E(x))) plus
``attribute_weight`` × the negative entropy of each adversary classifier.
Both adversarial terms are bounded (SSIM ≤ 1, entropy ≤ log K), where
maximising the adversaries' raw losses would diverge.

Not DP-valid as published: the adversaries are updated on the batch before
the encoder's gradient is taken through them, so sample ``i``'s gradient
depends on every other sample of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import check_positive
from ...errors import ConfigError
from ...losses.ssim import ssim_per_sample
from ...models.decoders import ReconstructionDecoder
from ..split import StepResult
from .base import Method, MethodContext, PhasePlan, StepInputs, TrainingState
from .registry import METHODS

__all__ = ["DeepObfuscator", "DeepObfuscatorOptions", "prediction_entropy"]

DECODER_WIDTH = 64  # the adversary decoder's stem width (the audit's attacker uses more)


@dataclass(frozen=True)
class DeepObfuscatorOptions:
    """The ``deepobfuscator:`` section.

    The adversaries train on detached features, ``adversary_lr`` for their Adam.
    """

    reconstruction_weight: float = 1.0
    attribute_weight: float = 1.0
    adversary_lr: float = 1e-3

    def __post_init__(self) -> None:
        check_positive(
            "deepobfuscator.reconstruction_weight", self.reconstruction_weight, allow_zero=True
        )
        check_positive("deepobfuscator.attribute_weight", self.attribute_weight, allow_zero=True)
        check_positive("deepobfuscator.adversary_lr", self.adversary_lr)


def prediction_entropy(kind: str, logits: Tensor) -> Tensor:
    """Per-sample entropy (nats) of a classifier's predicted distribution."""
    if kind == "binary":
        p = torch.sigmoid(logits.reshape(logits.shape[0]))
        return F.binary_cross_entropy(p, p, reduction="none")  # −p log p − (1−p) log(1−p)
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@METHODS.register("deepobfuscator")
class DeepObfuscator(Method):
    """Adversarial training against a decoder and the private-attribute classifiers."""

    name = "deepobfuscator"
    Options = DeepObfuscatorOptions
    per_sample = False
    not_per_sample_because = (
        "its adversaries are updated on the batch before the encoder's gradient is taken "
        "through them, so one sample's gradient depends on the others"
    )

    def check(self) -> None:
        self.require_one_shared_map()
        if not self.config.private_attributes:
            raise ConfigError(
                "method='deepobfuscator' trains against private attributes: "
                "name at least one in private_attributes"
            )
        dense = [s.name for s in self.config.private_attributes if s.is_dense]
        if dense:
            raise ConfigError(
                f"method='deepobfuscator' needs classification private attributes; {dense} "
                "are dense"
            )

    def phases(self) -> list[PhasePlan]:
        config = self.config
        everyone = tuple(spec.name for spec in config.all_labels)
        dp = config.privacy.uses_dp
        return [PhasePlan("adversarial", everyone, True, dp, 0.0, config.train.epochs)]

    def build_state(self, context: MethodContext) -> TrainingState:
        channels, height, width = context.feature_shape
        decoder = ReconstructionDecoder(
            channels, (height, width), context.input_shape[1:], width=DECODER_WIDTH
        )
        self.private_heads = context.heads  # the adversary classifiers are the private heads
        self.to_pixels = context.to_pixels
        optimizer = torch.optim.Adam(decoder.parameters(), lr=self.options.adversary_lr)
        self.state = TrainingState(nn.ModuleDict({"decoder": decoder}), {"decoder": optimizer})
        return self.state

    def step(self, phase: PhasePlan, inputs: StepInputs) -> StepResult:
        """Adversaries fit the features, then the encoder fools them.

        The decoder reconstructs pixels in [0, 1] (sigmoid output), which SSIM
        compares. The private attributes' consumers are the adversary
        classifiers (their heads train on detached features like any
        consumer); the encoder never sees their labels, only their predictions'
        entropy.
        """
        tasks, private = self.config.tasks, self.config.private_attributes
        decoder = self.state.models["decoder"]
        decoder_optimizer = self.state.optimizers["decoder"]
        pixels = self.to_pixels(inputs.images)
        names = [s.name for s in (*tasks, *private)]
        shared = inputs.model(inputs.images, names=names)[names[0]]  # one map for all
        losses: dict[str, float] = {}
        # 1. the adversaries
        recon_loss = F.mse_loss(decoder(shared.detach()), pixels)
        decoder_optimizer.zero_grad(set_to_none=True)
        recon_loss.backward()
        decoder_optimizer.step()
        losses["adversary_reconstruction"] = float(recon_loss.detach())
        for spec in private:
            reply = inputs.consumers[spec.name].step(shared.detach(), inputs.targets[spec.name])
            losses[f"adversary_{spec.name}"] = reply.loss
        # 2. the encoder: task gradients from the consumers, adversarial terms here
        replies = {
            s.name: inputs.consumers[s.name].step(shared, inputs.targets[s.name]) for s in tasks
        }
        losses.update({name: reply.loss for name, reply in replies.items()})
        recon_similarity = ssim_per_sample(decoder(shared), pixels, data_range=1.0).mean()
        heads = cast(nn.ModuleDict, self.private_heads)
        entropy = sum(prediction_entropy(s.kind, heads[s.name](shared)).mean() for s in private)
        options = self.options
        adversarial = (
            options.reconstruction_weight * recon_similarity - options.attribute_weight * entropy
        )
        grads = [reply.grad for reply in replies.values()]
        assert inputs.optimizer is not None  # the encoder always trains
        inputs.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(
            [shared] * len(grads) + [adversarial], [*grads, torch.ones_like(adversarial)]
        )
        inputs.optimizer.step()
        losses["reconstruction_ssim"] = float(recon_similarity.detach())
        return StepResult(
            losses=losses,
            terms={"adversarial_term": float(adversarial.detach())},
            batch_size=len(inputs.images),
        )
