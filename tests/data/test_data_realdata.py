"""The loaders on the real CelebA / StateFarm / CamVid folders (a few hundred images each).

Skipped, with the reason, when ``$METAMORPHOSIS_DATA`` (or ``<repo>/../shared/data``)
does not hold the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import IGNORE_INDEX, build_datasets

pytestmark = pytest.mark.realdata

RootFinder = Callable[[str], Path]


def test_celeba_smile_gender_identity(real_data_root: RootFinder) -> None:
    root = real_data_root("celeba")
    labels = (
        LabelSpec("smile", column="Smiling"),
        LabelSpec("gender", column="Male"),
        LabelSpec("person", column="identity", kind="multiclass"),
    )
    data = DataConfig(name="celeba", image_size=64, max_train=200, max_eval=50)
    splits = build_datasets(data, labels, seed=0, root=root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (200, 50, 50)
    assert splits.num_classes["smile"] == 2 and splits.num_classes["person"] > 1000
    # the official partition of this subset: 1-8000 train, 8001-9000 val, 9001- test
    assert max(int(i[:6]) for i in splits.train.item_ids) <= 8000
    assert all(8000 < int(i[:6]) <= 9000 for i in splits.val.item_ids)
    assert min(int(i[:6]) for i in splits.test.item_ids) > 9000
    images, batch = next(iter(DataLoader(splits.train, batch_size=32)))
    assert images.shape == (32, 3, 64, 64) and images.dtype == torch.float32
    assert batch["smile"].dtype == torch.float32 and set(batch["smile"].tolist()) <= {0.0, 1.0}
    assert batch["person"].dtype == torch.int64
    assert int(batch["person"].max()) < splits.num_classes["person"]
    smiling = splits.train.class_targets("smile").mean()
    assert 0.3 < smiling < 0.7  # 48 % in the whole subset
    assert splits.train.class_targets("gender").mean() == pytest.approx(0.42, abs=0.12)


def test_celeba_first_row_matches_the_attribute_file(real_data_root: RootFinder) -> None:
    root = real_data_root("celeba")
    data = DataConfig(name="celeba", image_size=64, max_train=50, max_eval=5)
    splits = build_datasets(data, (LabelSpec("smile", column="Smiling"),), seed=1, root=root)
    names = (root / "list_attr_celeba.txt").read_text().splitlines()[1].split()
    rows = {}
    with (root / "list_attr_celeba.txt").open() as handle:
        for line in handle.readlines()[2:]:
            fields = line.split()
            rows[fields[0]] = fields[1 + names.index("Smiling")]
    for item_id in splits.train.item_ids[:10]:
        expected = 1.0 if rows[item_id] == "1" else 0.0
        assert splits.train.get_item_by_id(item_id)[1]["smile"].item() == expected


def test_statefarm_behaviour_and_driver(real_data_root: RootFinder) -> None:
    root = real_data_root("statefarm")
    labels = (
        LabelSpec("behaviour", kind="multiclass"),
        LabelSpec("driver", kind="multiclass"),
    )
    data = DataConfig(name="statefarm", image_size=(48, 64), max_train=150, max_eval=50)
    splits = build_datasets(data, labels, seed=0, root=root)
    assert splits.num_classes == {"behaviour": 10, "driver": 26}
    images, batch = next(iter(DataLoader(splits.train, batch_size=16, shuffle=True)))
    assert images.shape == (16, 3, 48, 64)
    assert batch["behaviour"].max() < 10 and batch["driver"].max() < 26
    # the stratified split keeps every behaviour in every split
    full = build_datasets(DataConfig(name="statefarm"), labels[:1], seed=0, root=root)
    for dataset in (full.train, full.val, full.test):
        assert set(dataset.class_targets("behaviour")) == set(range(10))
    assert len(full.val) == pytest.approx(2242, abs=2)


def test_statefarm_split_by_driver_keeps_drivers_apart(real_data_root: RootFinder) -> None:
    root = real_data_root("statefarm")
    labels = (LabelSpec("driver", column="subject", kind="multiclass"),)
    splits = build_datasets(
        DataConfig(name="statefarm", split_by="driver"), labels, seed=0, root=root
    )
    drivers = [set(ds.class_targets("driver")) for ds in (splits.train, splits.val, splits.test)]
    assert all(drivers)
    assert not (drivers[0] & drivers[1] or drivers[0] & drivers[2] or drivers[1] & drivers[2])
    assert len(set.union(*drivers)) == 26
    total = len(splits.train) + len(splits.val) + len(splits.test)
    assert total == 22424 and 0.05 < len(splits.test) / total < 0.2
    sample = splits.test[0]
    assert sample[1]["driver"].item() in drivers[2]


def test_camvid_segmentation_and_boundaries(real_data_root: RootFinder) -> None:
    root = real_data_root("camvid")
    labels = (
        LabelSpec("seg", kind="segmentation"),
        LabelSpec("edges", column="boundary", kind="segmentation"),
    )
    full = build_datasets(DataConfig(name="camvid"), labels, seed=0, root=root)
    assert (len(full.train), len(full.val), len(full.test)) == (367, 101, 233)
    data = DataConfig(name="camvid", image_size=(60, 80), max_train=12, max_eval=4)
    splits = build_datasets(data, labels, seed=0, root=root)
    assert splits.num_classes == {"seg": 11, "edges": 2}
    images, batch = next(iter(DataLoader(splits.train, batch_size=12)))
    assert images.shape == (12, 3, 60, 80)
    seg, edges = batch["seg"], batch["edges"]
    assert seg.shape == edges.shape == (12, 60, 80) and seg.dtype == edges.dtype == torch.int64
    assert seg.min() >= IGNORE_INDEX and seg.max() <= 10
    assert len(torch.unique(seg)) > 5
    assert set(torch.unique(edges).tolist()) <= {IGNORE_INDEX, 0, 1}
    assert torch.equal(edges == IGNORE_INDEX, seg == IGNORE_INDEX)
    share = (edges == 1).float().sum() / (edges != IGNORE_INDEX).float().sum()
    assert 0.01 < share < 0.4
    # a boundary pixel really has a neighbour of another valid class
    b, y, x = (edges[:, 1:-1, 1:-1] == 1).nonzero()[0].tolist()
    y, x = y + 1, x + 1
    neighbours = [seg[b, y - 1, x], seg[b, y + 1, x], seg[b, y, x - 1], seg[b, y, x + 1]]
    assert any(int(n) not in (IGNORE_INDEX, int(seg[b, y, x])) for n in neighbours)
    assert np.array_equal(splits.test.class_names["seg"][:2], ["Sky", "Building"])


def test_celeba_label_floor_of_gender(real_data_root: RootFinder) -> None:
    """The label floor on the 1,000-image CelebA test split (issue 11 quotes these numbers):
    gender guessed from the true smile / high-cheekbones labels, beside the majority rate."""
    from metamorphosis.audit.attribute import label_floor

    labels = (
        LabelSpec("smile", column="Smiling"),
        LabelSpec("cheekbones", column="High_Cheekbones"),
        LabelSpec("gender", column="Male"),
    )
    data = DataConfig(name="celeba", image_size=64)
    test = build_datasets(data, labels, seed=0, root=real_data_root("celeba")).test
    target = {s.name: torch.as_tensor(test.class_targets(s.name)) for s in labels}
    gender = target["gender"].float()
    assert len(gender) == 1000
    assert max(float(gender.mean()), 1 - float(gender.mean())) == pytest.approx(0.577)
    assert label_floor(target["smile"], target["gender"]) == pytest.approx(0.589)
    assert label_floor(target["cheekbones"], target["gender"]) == pytest.approx(0.645)
