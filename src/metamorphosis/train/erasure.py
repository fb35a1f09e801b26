"""Linear erasure of the private attributes from every public task's release.

After the producer has trained (``defence.erase: linear``), LEACE (Belrose et
al., "LEACE: Perfect linear concept erasure in closed form", NeurIPS 2023; the
``concept-erasure`` package) is fitted for each public task on its code (the
bottleneck mean, or the module output) over the training split, with the
private attributes one-hot as the concept. On the data it was fitted on, no
linear classifier of the erased code predicts the concept better than a
constant. The erased code is what is released from then on, so the consumer
heads are fine-tuned on it (``defence.head_epochs``).

What it does not promise: the guarantee is linear and in-sample. A non-linear
attacker (the audit's MLP and k-NN) may still read the attribute, and test
images are not the fitting data. The eraser's statistics come from the training
images without DP: ε does not cover them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..config import Config, LabelSpec
from ..models.producer import Producer
from .split import ConsumerLike

__all__ = ["concept_matrix", "fit_erasers", "finetune_heads"]


def concept_matrix(specs: Sequence[LabelSpec], targets: Mapping[str, Tensor]) -> Tensor:
    """The private attributes as LEACE's concept: a 0/1 column per binary attribute, a
    one-hot block per multiclass one, side by side (N × Σ columns)."""
    columns = []
    for spec in specs:
        target = targets[spec.name]
        if spec.kind == "binary":
            columns.append(target.reshape(-1, 1).float())
        else:
            assert spec.num_classes is not None  # filled from the data before training
            columns.append(torch.nn.functional.one_hot(target.long(), spec.num_classes).float())
    return torch.cat(columns, dim=1)


@torch.no_grad()
def fit_erasers(
    producer: Producer, loader: DataLoader, config: Config, device: torch.device
) -> dict[str, list[str]]:
    """Fit every public task's eraser on ``loader`` (the training split); return
    ``{task: [erased attribute names]}`` for ``run.json``'s ``release``."""
    # imported here: the package scripts a function with torch.jit at import, which
    # every run without erasure need not pay for (nor see its deprecation warning)
    from concept_erasure import LeaceFitter

    private = list(config.private_attributes)
    tasks = [spec.name for spec in config.tasks]
    fitters: dict[str, LeaceFitter] = {}
    producer.eval()
    for images, targets in loader:
        images = images.to(device)
        shared = producer.encode(images)
        concept = concept_matrix(private, targets).to(device, torch.float64)
        for task in tasks:
            code, _ = producer.release_of(task).code(producer.task_modules[task](shared))
            flat = code.flatten(1).double()
            if task not in fitters:
                fitters[task] = LeaceFitter(
                    flat.shape[1],
                    concept.shape[1],
                    constrain_cov_trace=False,  # keeps the eraser low-rank: d × r factors
                    device=device,
                    dtype=torch.float64,
                )
            fitters[task].update(flat, concept)
    for task, fitter in fitters.items():
        eraser = fitter.eraser
        assert eraser.bias is not None  # affine LEACE
        target = producer.release_of(task).eraser
        assert target is not None  # built with an eraser: defence.erase is linear
        target.load(eraser.proj_left, eraser.proj_right, eraser.bias)
    return {task: [spec.name for spec in private] for task in fitters}


def finetune_heads(
    producer: Producer,
    consumers: Mapping[str, ConsumerLike],
    loader: DataLoader,
    names: Sequence[str],
    device: torch.device,
    on_batch: Callable[[Tensor], None] = lambda index: None,
) -> None:
    """One epoch of the heads of ``names`` on the producer's release (producer frozen,
    eval mode, keyed noise on): what a consumer does with the features it is sent.
    ``loader`` yields ``(images, targets, index)``; ``on_batch(index)`` runs first."""
    producer.eval()
    for images, targets, index in loader:
        on_batch(index)
        with torch.no_grad():
            features = producer(images.to(device), names=names)
        for name in names:
            consumers[name].step(features[name], targets[name].to(device))
