"""Shared machinery: cache, progress bar, pickling, registry, data roots, boundary maps."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import (
    IGNORE_INDEX,
    ImageTransform,
    LabelledImageDataset,
    build_datasets,
    list_datasets,
    register_dataset,
)
from metamorphosis.data import registry as registry_module
from metamorphosis.data.base import Sample
from metamorphosis.data.camvid import boundary_map
from metamorphosis.errors import ConfigError, DataError


class _Counting(LabelledImageDataset):
    """Counts decodes; item k is a flat image of grey level k % 256."""

    def __init__(self, size: int, *, cache: bool) -> None:
        super().__init__(
            item_ids=[f"item{k}" for k in range(size)],
            labels=[LabelSpec("flag")],
            transform=ImageTransform(8),
            cache=cache,
            description="counting train",
            targets={"flag": np.arange(size) % 2},
        )
        self.decoded = 0

    def _decode(self, index: int) -> Sample:
        self.decoded += 1
        return np.full((8, 8, 3), index % 256, dtype=np.uint8), {}


def test_cache_decodes_each_item_once() -> None:
    cached, uncached = _Counting(20, cache=True), _Counting(20, cache=False)
    for dataset in (cached, uncached):
        for _ in range(2):
            for index in range(len(dataset)):
                dataset[index]
    assert cached.decoded == 20 and uncached.decoded == 40
    image, labels = cached[3]
    assert torch.all(image == 3 / 127.5 - 1) and labels["flag"].item() == 1.0


def test_first_caching_pass_over_many_files_shows_progress(
    capsys: pytest.CaptureFixture[str],
) -> None:
    small = _Counting(400, cache=True)
    for index in range(len(small)):
        small[index]
    assert "caching" not in capsys.readouterr().err
    big = _Counting(600, cache=True)
    for index in range(len(big)):
        big[index]
    err = capsys.readouterr().err
    assert "caching counting train" in err and "/600" in err
    big[0]
    assert capsys.readouterr().err == ""


def test_preload_fills_the_cache_with_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    dataset = _Counting(600, cache=True)
    dataset.preload()
    assert "decoding counting train" in capsys.readouterr().err
    dataset[599]
    assert dataset.decoded == 600


def test_datasets_pickle_mid_pass() -> None:
    dataset = _Counting(600, cache=True)
    dataset[0]  # opens the progress bar
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[5][0], dataset[5][0]) and clone.item_ids == dataset.item_ids


def test_duplicate_ids_are_a_data_error() -> None:
    class _Twice(_Counting):
        def __init__(self) -> None:
            LabelledImageDataset.__init__(
                self,
                item_ids=["a", "a"],
                labels=[],
                transform=ImageTransform(8),
                cache=False,
                description="twice",
            )

    with pytest.raises(DataError, match="repeated: \\['a'\\]"):
        _Twice()


def test_registry_lists_every_dataset_and_rejects_unknown_names() -> None:
    names = list_datasets()
    assert names == sorted(names)
    assert {"synthetic", "celeba", "statefarm", "camvid", "nyuv2", "cityscapes", "csv"} <= set(
        names
    )
    with pytest.raises(ConfigError, match="data.name='mnist'.*camvid, celeba"):
        build_datasets(DataConfig(name="mnist"), [], seed=0)
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset("synthetic")(lambda *a, **k: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigError, match="seed"):
        build_datasets(DataConfig(), [], seed=-1)


def test_registering_a_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", registry_module._REGISTRY.copy())
    seen = {}

    @register_dataset("tiny")
    def build_tiny(data, labels, *, seed, root):  # noqa: ANN001, ANN202
        seen.update(seed=seed, root=root)
        return build_datasets(DataConfig(num_samples=10), labels, seed=seed)

    splits = build_datasets(DataConfig(name="tiny"), [], seed=5, root="x")
    assert "tiny" in list_datasets() and seen == {"seed": 5, "root": "x"}
    assert len(splits.train) == 8


def test_data_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = [LabelSpec("smile", column="Smiling")]
    monkeypatch.delenv("METAMORPHOSIS_DATA", raising=False)
    with pytest.raises(DataError, match=r"data\.root.*\$METAMORPHOSIS_DATA"):
        build_datasets(DataConfig(name="celeba"), labels, seed=0)
    monkeypatch.setenv("METAMORPHOSIS_DATA", str(tmp_path))
    with pytest.raises(DataError, match=rf"{tmp_path / 'celeba'} does not exist.*data\.root"):
        build_datasets(DataConfig(name="celeba"), labels, seed=0)
    with pytest.raises(DataError, match=rf"{tmp_path / 'given'} does not exist"):
        build_datasets(
            DataConfig(name="celeba", root="/elsewhere"), labels, seed=0, root=tmp_path / "given"
        )
    (tmp_path / "celeba").mkdir()
    with pytest.raises(DataError, match="list_attr_celeba.txt does not exist"):
        build_datasets(DataConfig(name="celeba"), labels, seed=0)


def _naive_boundary(seg: np.ndarray) -> np.ndarray:
    out = np.zeros_like(seg)
    height, width = seg.shape
    for y in range(height):
        for x in range(width):
            if seg[y, x] == IGNORE_INDEX:
                out[y, x] = IGNORE_INDEX
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width:
                    other = seg[ny, nx]
                    if other != IGNORE_INDEX and other != seg[y, x]:
                        out[y, x] = 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_boundary_map_matches_a_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    seg = rng.integers(-1, 4, size=(9, 13)).astype(np.int16)
    seg[rng.random(seg.shape) < 0.5] = 2  # some uniform regions
    np.testing.assert_array_equal(boundary_map(seg), _naive_boundary(seg))
