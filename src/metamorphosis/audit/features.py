"""Features of a data split, extracted once and shared by every attack.

Every attack in the audit reads the same tensors: the shared encoder output
``E(x)`` (what a universal-feature producer would publish), each label's
features as the producer releases them (its module output ``g_t(E(x))``, then
its defence's bottleneck, eraser and keyed noise: what a consumer receives),
the images in pixel range [0, 1] and the label targets. Extracting them once
keeps the audit's cost to one producer forward per image and guarantees the
attacks see identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..data.transforms import to_pixels
from ..models.producer import Producer

__all__ = ["ENCODER_SOURCE", "FeatureSet", "extract_features", "subset_indices", "to_pixels"]

ENCODER_SOURCE = "encoder"
"""Name of the shared encoder output among the feature sources."""


@dataclass
class FeatureSet:
    """One split's features per source, with the images and labels they came from.

    Attributes:
        sources: ``"encoder"`` and every label's module name -> N×C×h×w float32 (CPU).
        images: N×3×H×W float32 in pixel range [0, 1] (CPU).
        targets: label name -> N-first target tensor (CPU).
        item_ids: the dataset ids of the N items, in order.
    """

    sources: dict[str, Tensor]
    images: Tensor
    targets: dict[str, Tensor]
    item_ids: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, indices: Sequence[int] | Tensor) -> FeatureSet:
        """The items at ``indices`` (a view of the same tensors where possible)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return FeatureSet(
            sources={k: v[index] for k, v in self.sources.items()},
            images=self.images[index],
            targets={k: v[index] for k, v in self.targets.items()},
            item_ids=[self.item_ids[i] for i in index.tolist()],
        )


def subset_indices(size: int, limit: int | None, seed: int) -> list[int]:
    """``limit`` indices of ``range(size)`` drawn with ``seed`` (all of them, in order, if None)."""
    if limit is None or limit >= size:
        return list(range(size))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:limit].tolist())


@torch.no_grad()
def extract_features(
    producer: Producer,
    dataset: Dataset,
    *,
    names: Sequence[str],
    mean: float,
    std: float,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "features",
) -> FeatureSet:
    """Run the producer once over (a seeded subset of) ``dataset``.

    Args:
        producer: a :class:`~metamorphosis.models.producer.Producer` (eval mode is set here).
        dataset: a split whose items are ``(image, labels)``.
        names: the labels whose released features to keep (public and private).
        mean: the normalisation mean of the producer's transform.
        std: the normalisation std of the producer's transform.
        limit: keep at most this many items (a seeded random subset).
        seed: seed of the subset.
        batch_size: producer batch size.
        device: where the producer runs; results come back to the CPU.
        progress: show a progress bar.
        description: the progress bar's label.
    """
    indices = subset_indices(len(cast(Sized, dataset)), limit, seed)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    producer.eval()
    chunks: dict[str, list[Tensor]] = {ENCODER_SOURCE: [], **{n: [] for n in names}}
    images: list[Tensor] = []
    targets: dict[str, list[Tensor]] = {}
    for batch_images, batch_targets in tqdm(
        loader, desc=description, leave=False, disable=not progress, unit="batch"
    ):
        batch_images = batch_images.to(device)
        shared = producer.encode(batch_images)
        chunks[ENCODER_SOURCE].append(shared.float().cpu())
        for name in names:  # what is released: bottleneck, eraser and keyed noise included
            released = producer.released(name, shared, batch_images)
            chunks[name].append(released.float().cpu())
        images.append(to_pixels(batch_images, mean=mean, std=std))
        for key, value in batch_targets.items():
            targets.setdefault(key, []).append(value)
    item_ids = getattr(dataset, "item_ids", None)
    return FeatureSet(
        sources={k: torch.cat(v) for k, v in chunks.items()},
        images=torch.cat(images),
        targets={k: torch.cat(v) for k, v in targets.items()},
        item_ids=[str(item_ids[i]) if item_ids else str(i) for i in indices],
    )
