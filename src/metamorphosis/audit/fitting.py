"""Seeded minibatch training and batched prediction shared by every attacker.

Attackers are ordinary supervised models trained on tensors already in
memory (features in, labels or images out); one loop serves them all so
every attack gets exactly the budget the report states. Classifier
attackers stop early on a held-out slice of their training items
(:func:`fit_early_stopped`); the reconstruction decoder trains a fixed
number of epochs (:func:`fit`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .budget import AttackBudget

__all__ = ["Holdout", "StopLog", "fit", "fit_early_stopped", "predict"]

LossFn = Callable[[Tensor, Tensor], Tensor]
Evaluate = Callable[[Tensor, Tensor], tuple[float, float]]
"""(outputs, targets) -> (score where higher is better, loss): how a held-out slice is judged."""


@dataclass(frozen=True)
class Holdout:
    """The slice of an attacker's training items it stops on, and how it is judged.

    Attributes:
        inputs: held-out inputs (never trained on).
        targets: their targets.
        evaluate: ``(outputs, targets) -> (score, loss)``; the score decides
            (higher is better) and the loss breaks ties, so that a plateau of
            a coarse score (accuracy on a few dozen items) still counts as
            progress while the loss falls.
    """

    inputs: Tensor
    targets: Tensor
    evaluate: Evaluate


@dataclass(frozen=True)
class StopLog:
    """What early stopping did: epochs run and the epoch whose weights were kept (1-based)."""

    epochs: int
    best_epoch: int


def _epoch_runner(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    *,
    budget: AttackBudget,
    seed: int,
    device: torch.device | str,
    bar: tqdm,
) -> Callable[[], None]:
    """A function that trains ``model`` one seeded epoch more each call."""
    inputs, targets = _resident(inputs, device), _resident(targets, device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    size = int(inputs.shape[0])

    def epoch() -> None:
        model.train()
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, budget.batch_size):
            index = order[start : start + budget.batch_size]
            batch = inputs[index.to(inputs.device)].to(device)
            outputs = model(batch)
            loss = loss_fn(outputs, targets[index.to(targets.device)].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)

    return epoch


def _bar(total: int, description: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=description, leave=False, disable=not progress, unit="step")


def fit(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    *,
    budget: AttackBudget,
    epochs: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "attacker",
) -> nn.Module:
    """Train ``model`` on ``(inputs, targets)`` with Adam for ``epochs`` seeded passes.

    ``loss_fn(outputs, targets)`` returns a scalar. On an accelerator the
    whole set moves there once when it fits in a quarter of the free memory
    (per-batch copies would dominate a small attacker's step); otherwise, and
    on the CPU, minibatches are gathered where the data lives. The shuffle is
    drawn on the CPU either way, so the result does not depend on where the
    data sits. Returns the model in eval mode.
    """
    batches = -(-int(inputs.shape[0]) // budget.batch_size)
    with _bar(epochs * batches, description, progress) as bar:
        epoch = _epoch_runner(
            model, inputs, targets, loss_fn, budget=budget, seed=seed, device=device, bar=bar
        )
        for _ in range(epochs):
            epoch()
    return model.eval()


def fit_early_stopped(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    *,
    holdout: Holdout | None,
    budget: AttackBudget,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "attacker",
) -> StopLog:
    """Train for at most ``budget.epochs`` epochs, stopping after ``budget.patience``
    epochs without improving on ``holdout``; the best epoch's weights are kept.

    Without a held-out slice, or with ``budget.patience=None``, every epoch
    runs and the last weights are kept. A budget's epoch count is then a cap
    rather than a guess of how long an attacker needs, so a weak result means
    the attacker converged, not that it ran out of epochs. The model ends in
    eval mode.
    """
    stopping = holdout is not None and budget.patience is not None
    batches = -(-int(inputs.shape[0]) // budget.batch_size)
    best: tuple[float, float] | None = None
    best_state: dict[str, Tensor] = {}
    best_epoch = epochs_run = 0
    with _bar(budget.epochs * batches, description, progress) as bar:
        epoch = _epoch_runner(
            model, inputs, targets, loss_fn, budget=budget, seed=seed, device=device, bar=bar
        )
        for epochs_run in range(1, budget.epochs + 1):
            epoch()
            if not stopping:
                continue
            assert holdout is not None and budget.patience is not None
            judged = _judge(model, holdout, device)
            if best is None or judged > best:
                best, best_epoch = judged, epochs_run
                best_state = copy.deepcopy(model.state_dict())
            elif epochs_run - best_epoch >= budget.patience:
                break
    if stopping:
        model.load_state_dict(best_state)
    else:
        best_epoch = epochs_run
    model.eval()
    return StopLog(epochs=epochs_run, best_epoch=best_epoch)


def _judge(model: nn.Module, holdout: Holdout, device: torch.device | str) -> tuple[float, float]:
    """(score, -loss) on the held-out slice, NaN read as the worst value, for comparison."""
    score, loss = holdout.evaluate(predict(model, holdout.inputs, device=device), holdout.targets)
    worst = float("-inf")
    return (
        worst if score != score else float(score),  # NaN: e.g. no valid pixel held out
        worst if loss != loss else -float(loss),
    )


def _resident(tensor: Tensor, device: torch.device | str) -> Tensor:
    device = torch.device(device)
    if device.type != "cuda":
        return tensor
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = tensor.numel() * tensor.element_size()
    return tensor.to(device) if nbytes < free // 4 else tensor


@torch.no_grad()
def predict(
    model: nn.Module, inputs: Tensor, *, batch_size: int = 256, device: torch.device | str = "cpu"
) -> Tensor:
    """``model(inputs)`` in eval mode, batched, gathered on the CPU."""
    model.eval()
    outputs = [
        model(inputs[start : start + batch_size].to(device)).cpu()
        for start in range(0, int(inputs.shape[0]), batch_size)
    ]
    return torch.cat(outputs)
