"""Training over several processes: ``torchrun --nproc-per-node N -m metamorphosis train``.

torchrun starts N copies of the command with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` set; :func:`from_environment` reads them and joins the process
group (``gloo`` on CPU, ``nccl`` on CUDA). What each rank does:

* **Batches.** Every rank draws the same *global* batch, with the same generator a
  one-process run uses (Poisson sampling at ``train.batch_size / N_train`` in DP
  phases, a shuffled permutation otherwise), and trains on its share
  ``batch[rank::world_size]`` (:class:`RankShare`). So ``train.batch_size`` stays the
  global expected batch, and the sample rate, the steps and ε are exactly those of
  one process. (Opacus' ``DistributedUniformWithReplacementSampler`` instead draws
  each rank's shard independently: the same distribution of global batches, but not
  the one-process run's batches, so that run could not be reproduced.) A global draw
  with fewer items than ranks is skipped by every rank alike (it is still a step for
  the accountant, as an empty draw is in one process).
* **The producer in DP phases**: Opacus' ``DPDDP`` (weights broadcast from rank 0)
  and ``DistributedDPOptimizer`` (per-sample clipping on each rank, the noise added
  once, on rank 0, the clipped sums all-reduced: in one collective,
  :class:`FlatDistributedDPOptimizer`), with the expected batch
  ``batch_size / world_size`` per rank, so a step is the one-process step. Under
  ``privacy.private_heads`` every head of a DP phase is wrapped the same way (its
  block noise σ·√blocks), in place of its synced step.
* **Everything else that trains** (heads, the producer outside DP phases, a
  method's own models) steps through :class:`SyncedOptimizer`: the gradients are
  all-reduced, each rank's weighted by its share of the global batch, so every
  rank applies the one-process step and the copies stay identical.
* **Randomness inside a step** (the variational code's samples) comes from a seed
  derived from ``train.seed``, the rank, the phase and the epoch.
* **Writes**: rank 0 alone writes ``metrics.jsonl``, checkpoints and the run dir
  (the training losses it logs are those of its own share of each batch). Every rank
  evaluates the full validation and test splits (identical results).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from opacus.optimizers import DistributedDPOptimizer
from torch.utils.data import Sampler

from ..errors import ConfigError

__all__ = [
    "all_reduce_flat",
    "BatchShare",
    "Distributed",
    "FlatDistributedDPOptimizer",
    "RankShare",
    "SyncedOptimizer",
    "distributed_world_size",
    "from_environment",
    "rank_seed",
    "ONE_PROCESS",
]


@dataclass(frozen=True)
class Distributed:
    """Where this process sits among the ranks (one process: world size 1, rank 0)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """``run.json``'s ``distributed`` entry."""
        return {"world_size": self.world_size, "backend": self.backend}

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def finish(self) -> None:
        """Wait for every rank (rank 0 writes the run dir last), then leave the group."""
        if self.active:
            dist.barrier()
            dist.destroy_process_group()

    def local_share(self, local: int) -> float:
        """This rank's items over the global batch's (one all-reduce; 1 for one process)."""
        if not self.active:
            return 1.0
        # nccl reduces CUDA tensors only
        device = "cuda" if self.backend == "nccl" else "cpu"
        total = torch.tensor([float(local)], device=device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return local / float(total.item())


ONE_PROCESS = Distributed()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r} is not an integer (set by torchrun)") from None


def distributed_world_size() -> int:
    """The number of ranks torchrun started (1 without torchrun), read before joining."""
    return max(_env_int("WORLD_SIZE", 1), 1)


def from_environment(device: str) -> Distributed:
    """The ranks torchrun set up, the process group joined; :data:`ONE_PROCESS` without
    torchrun. ``device`` (``train.device``) picks the backend."""
    world_size = distributed_world_size()
    if world_size == 1:
        return ONE_PROCESS
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ConfigError(f"$RANK={rank} is outside $WORLD_SIZE={world_size}")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(world_size, rank, local_rank, backend)


def rank_seed(seed: int, rank: int, phase: int, epoch: int) -> int:
    """The seed of one rank's in-step randomness for one epoch (fixed by the epoch, so a
    resumed run draws what the uninterrupted one drew)."""
    return (seed * 1_000_003 + phase * 10_007 + epoch * 101 + rank * 7_919) % 2**63


class RankShare(Sampler[list[int]]):
    """A rank's share ``batch[rank::world_size]`` of each global batch.

    Global batches with fewer items than ranks are skipped by every rank (each draws
    the same global batches, so they agree); with one process that drops exactly the
    empty Poisson draws.
    """

    def __init__(self, batches: Any, distributed: Distributed) -> None:
        self.batches = batches
        self.distributed = distributed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        world, rank = self.distributed.world_size, self.distributed.rank
        for batch in self.batches:
            batch = list(batch)
            if len(batch) >= world:
                yield batch[rank::world]


class SyncedOptimizer:
    """An optimiser whose ``step`` first all-reduces its gradients across the ranks.

    Each rank's gradient is of its loss averaged over its own share; weighted by
    :attr:`share` (its items over the global batch's) and summed, they are the
    gradient of the loss averaged over the global batch: the one-process step.
    Everything else (``zero_grad``, ``state``, ``state_dict``, ``param_groups``) is the
    wrapped optimiser's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, shares: BatchShare) -> None:
        self.optimizer = optimizer
        self._shares = shares

    def step(self, closure: Any = None) -> Any:
        grads = [
            param.grad
            for group in self.optimizer.param_groups
            for param in group["params"]
            if param.grad is not None  # the same parameters on every rank
        ]
        all_reduce_flat(grads, scale=self._shares.current)
        return self.optimizer.step(closure)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def all_reduce_flat(tensors: list[torch.Tensor], *, scale: float = 1.0) -> None:
    """Sum ``scale ×`` each tensor over the ranks, in place, in one collective (one per
    parameter costs a round trip each: hundreds per step for a ResNet)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if scale != 1.0:
        flat.mul_(scale)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


class FlatDistributedDPOptimizer(DistributedDPOptimizer):
    """Opacus' distributed DP optimiser with its gradient all-reduce in one collective."""

    def reduce_gradients(self) -> None:
        grads = [p.grad for p in self.params if p.requires_grad and p.grad is not None]
        scale = 1.0 / self.world_size if self.loss_reduction == "mean" else 1.0
        all_reduce_flat(grads, scale=scale)


class BatchShare:
    """The current batch's share, set once per batch by the trainer."""

    def __init__(self) -> None:
        self.current = 1.0
