"""Seeded minibatch training and batched prediction shared by every attacker.

Attackers are ordinary supervised models trained on tensors already in
memory (features in, labels or images out); one loop serves them all so
every attack gets exactly the budget the report states.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .budget import AttackBudget

__all__ = ["fit", "predict"]

LossFn = Callable[[Tensor, Tensor], Tensor]


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
    inputs, targets = _resident(inputs, device), _resident(targets, device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    size = int(inputs.shape[0])
    batches = -(-size // budget.batch_size)
    bar = tqdm(
        total=epochs * batches, desc=description, leave=False, disable=not progress, unit="step"
    )
    for _ in range(epochs):
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
    bar.close()
    return model.eval()


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
