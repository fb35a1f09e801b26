"""The DP-SGD wiring of a training run, in one place.

Everything Opacus-specific that the trainer needs lives here: calibrating one
noise multiplier for every DP phase, Poisson-sampled batches, wrapping the
producer in a ``GradSampleModule`` and its optimiser in a ``DPOptimizer``, and
ε of the steps taken so far (cached: an accountant call costs up to a second).
The trainer only asks "a loader for this phase", "wrap this model", "ε now";
under torchrun the same questions get each rank's share of the global batch and
Opacus' ``DPDDP`` with its ``DistributedDPOptimizer`` (:mod:`..train.distributed`).

By default only producer-side parameters go through the engine: heads (consumers)
train without DP. ``privacy.private_heads`` wraps every head a DP phase trains as
well, each block clipped on its own and noised at ``σ·√blocks`` (:meth:`DPEngine.
block_noise`), so one accountant at σ covers every trained weight (see the README's
privacy section for what ε covers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

import torch
from opacus import GradSampleModule
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from ..config import PrivacyConfig
from ..train.distributed import ONE_PROCESS, Distributed, FlatDistributedDPOptimizer, RankShare
from .accounting import DPPhase, epsilon_of_phases, noise_for_target_epsilon

__all__ = ["DPEngine", "HeadDP", "PlannedPhase", "dp_sgd_head"]


@dataclass(frozen=True)
class PlannedPhase:
    """What the engine needs of a phase: its name, whether it is DP, its epochs."""

    name: str
    dp: bool
    epochs: int


@dataclass(frozen=True)
class HeadDP:
    """The DP-SGD step of a head trained in the producer's Poisson batches
    (``privacy.private_heads``): what a remote consumer is told with every step.

    ``noise_multiplier`` is the head's block noise σ·√blocks (:meth:`DPEngine.
    block_noise`), ``expected_batch_size`` the producer's expected Poisson batch: the
    clipped sum plus noise is divided by it, never by the batch drawn.
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int


def dp_sgd_head(
    head: nn.Module, optimizer: torch.optim.Optimizer, settings: HeadDP
) -> tuple[AbstractGradSampleModule, DPOptimizer]:
    """``head`` with per-sample gradients and ``optimizer`` clipping and noising them as
    ``settings`` say (one process: a remote consumer's head; the trainer wraps its own
    heads with :meth:`DPEngine.wrap`, which knows about torchrun)."""
    return GradSampleModule(head, loss_reduction="mean"), DPOptimizer(
        optimizer,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=settings.expected_batch_size,
        loss_reduction="mean",
    )


class _NonEmptyBatches(Sampler[list[int]]):
    """Poisson batches with the (rare) empty draws dropped.

    An empty draw is still a DP step for the accountant (the sampler made
    it); it just has nothing to train on.
    """

    def __init__(self, sampler: UniformWithReplacementSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        return (list(batch) for batch in self.sampler if len(batch) > 0)


class _ExpandedWeights(GradSampleModuleExpandedWeights):
    """Expanded weights that start each step afresh.

    PyTorch's expanded weights refuse a forward pass while any parameter still
    holds ``grad_sample`` (they would accumulate). The optimiser's step has used
    the previous step's per-sample gradients by then, so a forward pass clears
    them: a method need not zero gradients before its forward pass.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs):
        for param in self._module.parameters():
            param.grad_sample = None
        return super().forward(x, *args, **kwargs)


class DPEngine:
    """DP-SGD for the phases of one run.

    Args:
        privacy: the run's privacy settings (δ, clipping bound, accountant, the
            target ε or an explicit noise multiplier).
        phases: every phase of the run, in order.
        train_size: items in the train split.
        batch_size: the expected batch (Poisson sampling at ``batch / train_size``).
        steps_per_epoch: steps of one epoch (the same for every phase).
        noise_multiplier: the noise to use instead of calibrating it (adding a
            task to a run whose noise is already fixed).
        prior_phases: DP phases already spent on these weights; ε composes them.
        distributed: the ranks (torchrun); batches are then each rank's share of the
            global batch, which ``batch_size`` still is.
    """

    def __init__(
        self,
        privacy: PrivacyConfig,
        phases: Sequence[PlannedPhase],
        *,
        train_size: int,
        batch_size: int,
        steps_per_epoch: int,
        noise_multiplier: float | None = None,
        prior_phases: Sequence[DPPhase] = (),
        distributed: Distributed = ONE_PROCESS,
    ) -> None:
        self.privacy = privacy
        self.distributed = distributed
        self.phases = list(phases)
        self.batch_size = batch_size
        self.sample_rate = batch_size / train_size
        self.steps_per_epoch = steps_per_epoch
        self.prior_phases = list(prior_phases)
        self._cache: dict[tuple[int, ...], float | None] = {}
        self.noise_multiplier = noise_multiplier or self._calibrated_noise()
        # refuse a noise too small to account now, not when run.json is written: the
        # planned step counts are those training ends with, so the value is cached
        self.epsilon([p.epochs * steps_per_epoch if p.dp else 0 for p in self.phases])

    def _calibrated_noise(self) -> float | None:
        dp_steps = sum(p.epochs for p in self.phases if p.dp) * self.steps_per_epoch
        if dp_steps == 0:
            return None
        if self.privacy.noise_multiplier is not None:
            return self.privacy.noise_multiplier
        assert self.privacy.target_epsilon is not None  # checked by PrivacyConfig
        return noise_for_target_epsilon(
            target_epsilon=self.privacy.target_epsilon,
            delta=self.privacy.delta,
            sample_rate=self.sample_rate,
            steps=dp_steps,
            accountant=self.privacy.accountant,
        )

    # -- data -----------------------------------------------------------------------
    def loader(
        self, dataset: Dataset, *, dp: bool, generator: torch.Generator, num_workers: int
    ) -> DataLoader:
        """Poisson batches in a DP phase (what the accountant assumes); shuffled otherwise.
        Under torchrun, this rank's share of each global batch."""
        size = len(cast(Sized, dataset))
        if dp:
            sampler = UniformWithReplacementSampler(
                num_samples=size,
                sample_rate=self.sample_rate,
                generator=generator,
                steps=self.steps_per_epoch,
            )
            if not self.distributed.active:
                batches: Sampler[list[int]] = _NonEmptyBatches(sampler)
            else:
                batches = RankShare(sampler, self.distributed)
            return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
        shuffled = RandomSampler(cast(Sized, dataset), generator=generator)
        if self.distributed.active:
            every = BatchSampler(shuffled, self.batch_size, drop_last=False)
            share = RankShare(every, self.distributed)
            return DataLoader(dataset, batch_sampler=share, num_workers=num_workers)
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=num_workers, sampler=shuffled
        )

    # -- models ---------------------------------------------------------------------
    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, blocks: int = 1
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Per-sample gradients for ``model`` (``privacy.grad_sampler``'s way); clipping and
        noise in ``optimizer``'s step.

        ``blocks``: how many separately clipped blocks each step noises (the producer and,
        under ``privacy.private_heads``, every head it trains with): see
        :meth:`block_noise`.
        """
        if self.distributed.active:
            model = DPDDP(model)  # every rank starts from rank 0's weights
        private_model = self._per_sample(model)
        settings = self._optimizer_settings(blocks)
        if not self.distributed.active:
            return private_model, DPOptimizer(
                optimizer, expected_batch_size=self.batch_size, **settings
            )
        # Noise once (rank 0), clipped sums all-reduced and averaged over the ranks:
        # with this expected batch per rank the step is the one-process step.
        share = self.batch_size / self.distributed.world_size
        return private_model, FlatDistributedDPOptimizer(
            optimizer,
            expected_batch_size=share,  # a float: Opacus only divides by it
            **settings,
        )

    def head_dp(self, blocks: int) -> HeadDP:
        """The DP-SGD step of each head trained beside the producer in ``blocks`` blocks."""
        return HeadDP(self.block_noise(blocks), self.privacy.max_grad_norm, self.batch_size)

    def block_noise(self, blocks: int) -> float:
        """The noise multiplier of each of ``blocks`` blocks clipped to ``max_grad_norm``
        apiece and noised in one step.

        One sample changes each block's clipped sum by at most C, so the concatenation
        by at most C·√blocks: noise σ·√blocks·C on every block is the Gaussian mechanism
        of multiplier σ on the whole step, which is what the accountant counts.
        """
        return float(self.noise_multiplier or 0.0) * math.sqrt(blocks)

    def _per_sample(self, model: nn.Module) -> AbstractGradSampleModule:
        if self.privacy.grad_sampler == "ew":
            return _ExpandedWeights(model, loss_reduction="mean")
        functorch = self.privacy.grad_sampler == "functorch"
        return GradSampleModule(model, loss_reduction="mean", force_functorch=functorch)

    def _optimizer_settings(self, blocks: int) -> dict[str, Any]:
        return {
            "noise_multiplier": self.block_noise(blocks),
            "max_grad_norm": self.privacy.max_grad_norm,
            "loss_reduction": "mean",
        }

    @staticmethod
    def unwrap(model: nn.Module) -> None:
        """Take the per-sample hooks and ``grad_sample`` attributes off a wrapped model."""
        if isinstance(model, AbstractGradSampleModule):
            model.cleanup()

    # -- accounting -----------------------------------------------------------------
    def dp_phases(self, steps_done: Sequence[int]) -> list[DPPhase]:
        """The prior DP phases, then each of this run's DP phases that has taken a step."""
        return self.prior_phases + [
            DPPhase(phase.name, float(self.noise_multiplier or 0.0), self.sample_rate, steps)
            for phase, steps in zip(self.phases, steps_done, strict=True)
            if phase.dp and steps > 0
        ]

    def epsilon(self, steps_done: Sequence[int]) -> float | None:
        """ε after ``steps_done`` DP steps of each phase (None: no DP step at all)."""
        key = tuple(steps_done)
        if key not in self._cache:
            self._cache[key] = epsilon_of_phases(
                self.dp_phases(steps_done),
                delta=self.privacy.delta,
                accountant=self.privacy.accountant,
            )
        return self._cache[key]
