"""The optimisers ``train.optimizer`` names, for the trainer and for remote consumers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["make_optimizer"]


def make_optimizer(name: str, params: Sequence[nn.Parameter], lr: float, wd: float):
    """The optimiser ``train.optimizer`` names (remote consumers build theirs with it too)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
