"""Seeded, deterministic train / val / test splits and subset caps.

Every function takes the seed explicitly and draws from its own
``numpy.random.Generator`` (salted per purpose), so the same seed always gives
the same split whatever else the program draws, and changing ``max_train``
never changes which items are in val or test.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError

__all__ = [
    "split_counts",
    "stratified_split",
    "group_split",
    "cap",
    "apply_caps",
    "split_from_codes",
    "Split",
]

Split = tuple[np.ndarray, np.ndarray, np.ndarray]

_SALT_SPLIT = 0x5B1
_SALT_GROUP = 0x6A0
_SALT_CAP = 0xCA9


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *salt])


def split_counts(size: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Val and test sizes: rounded, but at least one item for a nonzero fraction.

    A tiny manifest would otherwise get an empty validation split, which breaks
    model selection in a way that is hard to trace back to the data.
    """
    counts = []
    for fraction in (val_fraction, test_fraction):
        count = int(round(size * fraction))
        counts.append(max(count, 1) if fraction > 0 and size >= 3 else count)
    n_val, n_test = counts
    if size and n_val + n_test >= size:
        raise DataError(
            f"{size} items cannot be split into val={val_fraction} and test={test_fraction} "
            "with any left to train on"
        )
    return n_val, n_test


def split_from_codes(codes: np.ndarray) -> Split:
    """Index arrays of the items whose code is 0 (train), 1 (val) and 2 (test)."""
    codes = np.asarray(codes)
    return np.flatnonzero(codes == 0), np.flatnonzero(codes == 1), np.flatnonzero(codes == 2)


def _even_pick(length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` evenly spaced positions in ``range(length)`` from a random offset."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    offset = rng.random()
    return np.floor((np.arange(count) + offset) * length / count).astype(np.int64)


def stratified_split(
    strata: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Split so that every stratum keeps (nearly) its share in train, val and test.

    Items are ordered by stratum, shuffled within each, and the held-out items
    are taken at evenly spaced positions of that order (systematic sampling):
    exact split sizes, and proportions per class that differ by at most one item.

    Returns:
        Sorted index arrays ``(train, val, test)``.
    """
    strata = np.asarray(strata)
    rng = _rng(seed, _SALT_SPLIT)
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(strata == value)) for value in np.unique(strata)]
        or [np.zeros(0, dtype=np.int64)]
    )
    n_val, n_test = split_counts(len(order), val_fraction, test_fraction)
    held_positions = _even_pick(len(order), n_val + n_test, rng)
    held = order[held_positions]
    test_positions = _even_pick(len(held), n_test, rng)
    test = held[test_positions]
    val = np.delete(held, test_positions)
    train = np.delete(order, held_positions)
    return np.sort(train), np.sort(val), np.sort(test)


def group_split(groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Split by group (e.g. driver) so that no group appears in two splits.

    Groups are shuffled, then each held-out split takes the groups that bring
    its size closest to its fraction of the items (at least one group for a
    nonzero fraction).

    Raises:
        DataError: too few groups to give every requested split one.
    """
    groups = np.asarray(groups)
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if len(names) < needed:
        raise DataError(
            f"splitting by group needs at least {needed} groups, the data has {len(names)}"
        )
    remaining = list(_rng(seed, _SALT_GROUP).permutation(len(names)))
    chosen = []
    for fraction, reserve in ((test_fraction, int(val_fraction > 0)), (val_fraction, 0)):
        picked = _pick_groups(remaining, sizes, fraction * len(groups), reserve)
        remaining = [g for g in remaining if g not in picked]
        chosen.append(picked)
    test_groups, val_groups = chosen
    split_of_group = np.zeros(len(names), dtype=np.int64)
    split_of_group[sorted(val_groups)] = 1
    split_of_group[sorted(test_groups)] = 2
    return split_from_codes(split_of_group[inverse])


def _pick_groups(candidates: list[int], sizes: np.ndarray, target: float, reserve: int) -> set[int]:
    """Greedy: add each group that moves the total closer to ``target``.

    ``reserve`` groups (plus one for train) are always left for later splits.
    """
    picked: set[int] = set()
    if target <= 0:
        return picked
    total = 0
    for group in candidates:
        if len(candidates) - len(picked) <= reserve + 1:
            break
        size = int(sizes[group])
        if not picked or abs(total + size - target) < abs(total - target):
            picked.add(group)
            total += size
    return picked


def cap(indices: np.ndarray, limit: int | None, seed: int, salt: int) -> np.ndarray:
    """A seeded random subset of at most ``limit`` indices, in their original order.

    Args:
        indices: the split's indices.
        limit: ``data.max_train`` / ``data.max_eval``; None keeps everything.
        seed: the run seed.
        salt: distinguishes the splits so each gets its own draw.
    """
    indices = np.asarray(indices)
    if limit is None or len(indices) <= limit:
        return indices
    keep = _rng(seed, _SALT_CAP, salt).choice(len(indices), size=limit, replace=False)
    return indices[np.sort(keep)]


def apply_caps(split: Split, max_train: int | None, max_eval: int | None, seed: int) -> Split:
    """``data.max_train`` / ``data.max_eval`` for quick runs: seeded subsets of each split."""
    train, val, test = split
    return cap(train, max_train, seed, 0), cap(val, max_eval, seed, 1), cap(test, max_eval, seed, 2)
