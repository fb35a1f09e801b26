"""Held-out evaluation: utility per label and the module-swap matrix.

The swap matrix follows the paper's protocol (Tables 4, 6–8): the head of
label ``j`` is fed the features of module ``i``; the diagonal is utility and
an off-diagonal cell says how much of label ``j`` leaks through label ``i``'s
features to a consumer who keeps its trained head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import LabelSpec
from ..metrics import create_metric, primary_metric

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    producer: nn.Module,
    heads: Mapping[str, nn.Module] | nn.ModuleDict,
    labels: Sequence[LabelSpec],
    loader: DataLoader,
    device: torch.device,
    *,
    swap: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Metrics per label, and ``swap[module][head]`` = primary metric of the head's label.

    With ``swap=False`` only the diagonal is computed (cheaper, for per-epoch
    validation) and the returned swap matrix is empty.
    """
    names = [spec.name for spec in labels]
    by_name = {spec.name: spec for spec in labels}
    pairs = [(i, j) for i in names for j in names if swap or i == j]
    metrics = {
        pair: create_metric(by_name[pair[1]].kind, by_name[pair[1]].num_classes) for pair in pairs
    }
    was_training = producer.training
    producer.eval()
    for head in heads.values():
        head.eval()
    for images, targets in loader:
        features = producer(images.to(device), names=names)
        for module_name, head_name in pairs:
            output = heads[head_name](features[module_name])
            metrics[(module_name, head_name)].update(output.cpu(), targets[head_name])
    producer.train(was_training)
    utility = {name: metrics[(name, name)].compute() for name in names}
    swap_matrix: dict[str, dict[str, float]] = {}
    if swap:
        for module_name, head_name in pairs:
            key = primary_metric(by_name[head_name].kind)[0]
            swap_matrix.setdefault(module_name, {})[head_name] = metrics[
                (module_name, head_name)
            ].compute()[key]
    return utility, swap_matrix
