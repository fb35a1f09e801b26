"""``method: metamorphosis``: Algorithm 2 of the paper (IoTDI 2023).

``privacy.mode`` picks the phases:

* ``none``  — one joint phase, universal features (identity modules), no DP;
* ``task``  — one joint phase with ω·Σ_{i<j} SSIM(g_i, g_j), no DP;
* ``input`` — one joint phase, DP-SGD on encoder + modules, no SSIM term;
* ``both``  — phase ``encoder``: DP encoder trained with the private-attribute
  classifiers (the public tasks when there are none); phase ``modules``: every
  module trained with the SSIM term against every other (public and private),
  encoder frozen unless ``privacy.freeze_encoder`` is false, updates still DP.

Every step is the split-learning step (:func:`~..split.producer_step`):
consumers answer features with feature-gradients, and the SSIM term is a mean
of per-sample similarities, so the step is DP-valid.
"""

from __future__ import annotations

from ..split import ExtraTerms, StepResult, producer_step
from .base import Method, PhasePlan, StepInputs
from .registry import METHODS

__all__ = ["MetaMorphosis"]


@METHODS.register("metamorphosis")
class MetaMorphosis(Method):
    """The paper's method: a metamorphosis module per task, SSIM, DP-SGD."""

    name = "metamorphosis"
    add_task = True  # a new module trains against the frozen encoder and modules

    def phases(self) -> list[PhasePlan]:
        config = self.config
        privacy, train = config.privacy, config.train
        everyone = tuple(spec.name for spec in config.all_labels)
        if privacy.mode == "both":
            public = tuple(spec.name for spec in config.tasks)
            private = tuple(spec.name for spec in config.private_attributes)
            encoder_epochs = train.encoder_epochs or train.epochs
            return [
                PhasePlan("encoder", private or public, True, True, 0.0, encoder_epochs),
                PhasePlan(
                    "modules",
                    everyone,
                    not privacy.freeze_encoder,
                    True,
                    privacy.omega,
                    train.epochs,
                ),
            ]
        omega = privacy.omega if privacy.mode == "task" else 0.0
        return [PhasePlan("joint", everyone, True, privacy.mode == "input", omega, train.epochs)]

    def step(self, phase: PhasePlan, inputs: StepInputs) -> StepResult:
        privacy = self.config.privacy
        return producer_step(
            inputs.model,
            inputs.optimizer,
            inputs.images,
            inputs.targets,
            inputs.consumers,
            phase.labels,
            compared=phase.compared,
            omega=phase.omega,
            similarity=privacy.similarity,
            data_range=privacy.ssim_data_range,
            extra_terms=self.extra_terms(phase, inputs),
        )

    def extra_terms(self, phase: PhasePlan, inputs: StepInputs) -> ExtraTerms | None:
        """A subclass's own loss terms for this step, added to the same backward pass."""
        return None
