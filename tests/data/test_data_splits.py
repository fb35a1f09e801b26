"""Seeded splits: exact sizes, stratification, groups, caps."""

from __future__ import annotations

import numpy as np
import pytest

from metamorphosis.data.splits import apply_caps, cap, group_split, split_counts, stratified_split
from metamorphosis.errors import DataError


def _assert_partition(split: tuple[np.ndarray, ...], size: int) -> None:
    joined = np.concatenate(split)
    assert len(joined) == size and len(np.unique(joined)) == size


def test_stratified_split_sizes_and_class_shares() -> None:
    rng = np.random.default_rng(0)
    strata = rng.choice(4, size=1003, p=[0.5, 0.3, 0.15, 0.05])
    train, val, test = stratified_split(strata, 0.1, 0.2, seed=3)
    _assert_partition((train, val, test), len(strata))
    assert (len(val), len(test)) == (100, 201)
    for part, fraction in ((val, 0.1), (test, 0.2)):
        for value in range(4):
            expected = fraction * np.sum(strata == value)
            assert abs(np.sum(strata[part] == value) - expected) <= 1.5


def test_stratified_split_is_seeded() -> None:
    strata = np.arange(200) % 3
    first = stratified_split(strata, 0.1, 0.1, seed=1)
    again = stratified_split(strata, 0.1, 0.1, seed=1)
    other = stratified_split(strata, 0.1, 0.1, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_tiny_sets_still_get_val_and_test() -> None:
    assert split_counts(5, 0.1, 0.1) == (1, 1)
    assert split_counts(10, 0.0, 0.1) == (0, 1)
    with pytest.raises(DataError, match="cannot be split"):
        split_counts(2, 0.4, 0.4)


def test_group_split_keeps_groups_apart() -> None:
    groups = np.repeat(np.arange(26), 40)
    train, val, test = group_split(groups, 0.1, 0.1, seed=0)
    _assert_partition((train, val, test), len(groups))
    sets = [set(groups[part]) for part in (train, val, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert all(sets)
    assert abs(len(test) - 104) <= 40 and abs(len(val) - 104) <= 40


def test_group_split_needs_enough_groups() -> None:
    with pytest.raises(DataError, match="at least 3 groups"):
        group_split(np.array([0, 0, 1, 1]), 0.2, 0.2, seed=0)


def test_caps_are_seeded_sorted_subsets() -> None:
    indices = np.arange(100, 200)
    kept = cap(indices, 10, seed=0, salt=0)
    assert len(kept) == 10 and np.all(np.diff(kept) > 0) and set(kept) <= set(indices)
    assert np.array_equal(kept, cap(indices, 10, seed=0, salt=0))
    assert not np.array_equal(kept, cap(indices, 10, seed=0, salt=1))
    assert cap(indices, None, seed=0, salt=0) is indices
    train, val, test = apply_caps((indices, indices[:20], indices[:5]), 7, 9, seed=0)
    assert (len(train), len(val), len(test)) == (7, 9, 5)
