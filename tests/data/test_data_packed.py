"""``metamorphosis pack`` and ``data: {name: packed}``: the same items, checked files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from metamorphosis.cli import app
from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import build_datasets
from metamorphosis.data import packed as packed_module
from metamorphosis.data.packed import pack_dataset
from metamorphosis.errors import ConfigError, DataError

LABELS = (
    LabelSpec("shape", kind="multiclass"),
    LabelSpec("background", kind="binary"),
    LabelSpec("seg", kind="segmentation"),
    LabelSpec("depth", kind="depth"),
    LabelSpec("normals", kind="normals"),
)
SOURCE = DataConfig(name="synthetic", image_size=16, num_samples=40, cache=False)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return pack_dataset(SOURCE, LABELS, tmp_path_factory.mktemp("p") / "pack", seed=3)


def packed_config(folder, **changes) -> DataConfig:
    return DataConfig(name="packed", root=str(folder), image_size=16, **changes)


def test_a_pack_gives_exactly_the_source_items(pack):
    source = build_datasets(SOURCE, LABELS, seed=3)
    packed = build_datasets(packed_config(pack), LABELS, seed=3)
    assert packed.num_classes == source.num_classes
    assert packed.input_shape == source.input_shape
    for split in ("train", "val", "test"):
        want, got = getattr(source, split), getattr(packed, split)
        assert got.item_ids == want.item_ids and len(got) == len(want) > 0
        for index in range(len(want)):
            (image_a, labels_a), (image_b, labels_b) = want[index], got[index]
            assert torch.equal(image_a, image_b)
            assert labels_a.keys() == labels_b.keys()
            for name in labels_a:
                assert labels_a[name].dtype == labels_b[name].dtype
                assert torch.equal(labels_a[name], labels_b[name]), (split, index, name)
        assert np.array_equal(got.class_targets("shape"), want.class_targets("shape"))


def test_a_subset_of_labels_and_caps_read_from_the_pack(pack):
    labels = (LabelSpec("smile_like", column="background", kind="binary"),)
    splits = build_datasets(packed_config(pack, max_train=10, max_eval=3), labels, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 3, 3)
    full = build_datasets(packed_config(pack), labels, seed=0).train
    image, label = splits.train[0]
    assert torch.equal(image, full.get_item_by_id(splits.train.item_ids[0])[0])
    assert set(label) == {"smile_like"}


def test_a_packed_split_pickles_without_its_arrays(pack):
    dataset = build_datasets(packed_config(pack), LABELS, seed=3).train
    dataset[0]  # maps the files in this process
    blob = pickle.dumps(dataset)
    assert len(blob) < (pack / "train.images.npy").stat().st_size  # names, not pixels
    again = pickle.loads(blob)
    assert torch.equal(again[1][0], dataset[1][0])


def test_the_cli_packs_and_a_tiny_run_trains_on_the_pack(tmp_path):
    from metamorphosis.config import config_from_dict
    from metamorphosis.experiment import train_run
    from tiny import tiny_config_dict

    raw = tiny_config_dict("none", epochs=1)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(json.dumps(raw))  # JSON is YAML
    result = CliRunner().invoke(app, ["pack", str(config_path), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "data.name=packed" in result.output
    from_source = train_run(config_from_dict(raw), tmp_path / "source", progress=False)
    raw["data"] = {"name": "packed", "root": str(tmp_path / "p"), "image_size": 16}
    from_pack = train_run(config_from_dict(raw), tmp_path / "run", progress=False)
    assert from_pack["config"]["data"]["name"] == "packed"
    # the same items in the same order: the same training, to the last digit
    assert from_pack["metrics"] == from_source["metrics"]
    assert set(from_pack["metrics"]) == {"shape", "large", "background"}


# -- bad and stale packs ------------------------------------------------------------------


def test_packing_refuses_an_existing_folder_and_a_pack(pack):
    with pytest.raises(ConfigError, match="exists"):
        pack_dataset(SOURCE, LABELS, pack, seed=3)
    with pytest.raises(ConfigError, match="packed' already"):
        pack_dataset(packed_config(pack), LABELS, pack.parent / "again", seed=3)


def test_a_killed_pack_leaves_nothing_that_looks_whole(tmp_path, monkeypatch):
    real = packed_module._pack_split

    def dies_on_val(dataset, labels, folder, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        return real(dataset, labels, folder, split, *args)

    monkeypatch.setattr(packed_module, "_pack_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        pack_dataset(SOURCE, LABELS, tmp_path / "pack", seed=3)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def copy(pack, tmp_path):
    import shutil

    return shutil.copytree(pack, tmp_path / "copy")


def test_a_config_that_does_not_match_the_pack_is_refused(copy):
    stale = r"image_size \[32, 32\] differs from the pack's \[16, 16\]"
    with pytest.raises(ConfigError, match=stale):
        build_datasets(DataConfig(name="packed", root=str(copy), image_size=32), LABELS, seed=3)
    with pytest.raises(ConfigError, match="offers: shape"):
        build_datasets(packed_config(copy), (LabelSpec("colour", kind="multiclass"),), seed=3)
    with pytest.raises(ConfigError, match="needs data.root"):
        build_datasets(DataConfig(name="packed", image_size=16), LABELS, seed=3)


def test_a_truncated_array_is_named(copy):
    path = copy / "train.images.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train.images.npy has .* bytes.*truncated"):
        build_datasets(packed_config(copy), LABELS, seed=3)


def label_file(folder, split: str, column: str):
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder / manifest["splits"][split]["labels"][column]["file"]


def test_a_flipped_byte_fails_the_checksum(copy):
    path = label_file(copy, "val", "seg")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"label 'seg' .*{path.name} fails its SHA-256"):
        build_datasets(packed_config(copy), LABELS, seed=3)


def test_a_missing_or_foreign_manifest_is_refused(copy):
    manifest = copy / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        build_datasets(packed_config(copy), LABELS, seed=3)
    manifest.write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(DataError, match="not a version-1 metamorphosis pack"):
        build_datasets(packed_config(copy), LABELS, seed=3)
    manifest.unlink()
    with pytest.raises(DataError, match="is not a pack"):
        build_datasets(packed_config(copy), LABELS, seed=3)


def test_an_array_of_another_shape_is_refused_even_with_a_matching_checksum(copy):
    # checksum and size made to agree: the manifest's shape still catches it
    manifest = json.loads((copy / "manifest.json").read_text())
    record = manifest["splits"]["test"]["labels"]["depth"]
    path = label_file(copy, "test", "depth")
    array = np.load(path)
    np.save(path, array.reshape(len(array), -1))
    record["sha256"], record["bytes"] = packed_module._sha256(path), path.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    splits = build_datasets(packed_config(copy), LABELS, seed=3)
    with pytest.raises(DataError, match="the pack was modified"):
        splits.test[0]
