"""Swap matrices and attribute inference on generated scenes: they must find what is there
and only that."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metamorphosis.audit.attacks.attacker import holdout_split, make_cell, score
from metamorphosis.audit.attacks.kept_heads import kept_head_swap
from metamorphosis.audit.attacks.leakage import attribute_rows, measure_leakage
from metamorphosis.audit.attacks.linear_probe import LinearProbe
from metamorphosis.audit.attribute import label_floor, majority_rate
from metamorphosis.audit.budget import AttackBudget
from metamorphosis.audit.features import FeatureSet, extract_features
from metamorphosis.config import DataConfig, LabelSpec
from metamorphosis.data import build_datasets
from metamorphosis.rundir import load_heads, load_producer, read_run_json

BUDGET = AttackBudget(
    name="test",
    train_items=None,
    test_items=None,
    epochs=15,
    reconstruction_epochs=1,
    batch_size=32,
    lr=3e-3,
    tsne_items=10,
    restarts=1,
)
BACKGROUND = LabelSpec(name="background", column="background", kind="binary")
COLOUR = LabelSpec(name="colour", column="colour", kind="multiclass", num_classes=4)


def _scenes(count: int, seed: int) -> FeatureSet:
    """Generated scenes whose private ``background`` tint is planted in the pixels.

    Sources: ``pixels`` (identity features, everything is there), ``blind``
    (constant features, nothing is there) and ``encoder`` (the pixels again,
    standing in for the universal features).
    """
    data = build_datasets(
        DataConfig(
            name="synthetic",
            image_size=(16, 16),
            num_samples=count,
            val_fraction=0.1,
            test_fraction=0.3,
        ),
        [COLOUR, BACKGROUND],
        seed=seed,
    )
    items = [data.train[i] for i in range(len(data.train))] + [
        data.test[i] for i in range(len(data.test))
    ]
    images = torch.stack([image for image, _ in items])
    targets = {k: torch.stack([t[k] for _, t in items]) for k in ("colour", "background")}
    return FeatureSet(
        sources={"pixels": images, "blind": torch.zeros_like(images), "encoder": images},
        images=images * 0.5 + 0.5,
        targets=targets,
        item_ids=[str(i) for i in range(len(items))],
    ), len(data.train)


@pytest.fixture(scope="module")
def scenes():
    features, n_train = _scenes(400, seed=1)
    return features.select(range(n_train)), features.select(range(n_train, len(features)))


def _linear_head(spec: LabelSpec) -> nn.Module:
    return nn.Sequential(nn.Flatten(1), nn.Linear(3 * 16 * 16, spec.num_outputs))


def test_majority_rate_is_the_train_majority_scored_on_test():
    train = torch.tensor([1.0, 1.0, 0.0])
    test = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert majority_rate(BACKGROUND, train, test) == pytest.approx(0.25)
    assert majority_rate(LabelSpec(name="d", column="depth", kind="depth"), train, test) is None


def test_attribute_inference_finds_a_planted_attribute_and_nothing_in_blind_features(scenes):
    train, test = scenes
    result = measure_leakage(
        _linear_head,
        [BACKGROUND],
        train,
        test,
        sources=["encoder", "pixels", "blind"],
        budget=BUDGET,
        seed=0,
    )
    entries = [e.to_dict() for e in result.entries]
    rows = {r["source"]: r for r in attribute_rows(entries, ["background"], ["pixels", "blind"])}
    majority = rows["pixels"]["majority"]
    assert 0.35 < majority < 0.65
    assert rows["pixels"]["head"] > 0.9 and rows["pixels"]["probe"] > 0.9
    assert rows["blind"]["head"] <= majority + 0.02
    assert rows["blind"]["probe"] <= majority + 0.02
    assert rows["blind"]["universal_head"] == rows["pixels"]["head"]  # encoder == pixels here
    blind = next(e for e in entries if e["source"] == "blind")
    assert all(value <= majority + 0.02 for value in blind["attackers"].values())


def test_retrained_swap_is_seeded(scenes):
    train, test = scenes
    first, second = (
        measure_leakage(
            _linear_head,
            [COLOUR, BACKGROUND],
            train,
            test,
            sources=["pixels"],
            budget=BUDGET,
            seed=5,
            attackers=("retrained_head",),
        ).retrained
        for _ in range(2)
    )
    assert first.matrix == second.matrix
    assert first.matrix["pixels"]["colour"] > 0.7  # chance is 25 %


def test_linear_probe_on_dense_labels_predicts_full_resolution_maps(scenes):
    train, test = scenes
    seg = LabelSpec(name="seg", column="seg", kind="segmentation", num_classes=3)
    train.targets["seg"] = (train.images[:, 0] > 0.5).long()
    test.targets["seg"] = (test.images[:, 0] > 0.5).long()
    cell = make_cell(
        seg,
        "pixels",
        train,
        test,
        split=holdout_split(len(train), BUDGET.holdout, 0),
        make_head=None,
        budget=BUDGET,
    )
    outputs = LinearProbe().predict(cell, seed=0)
    assert outputs.shape == (len(test), 3, 16, 16)  # full resolution, one map per class
    metrics = score(seg, outputs, test.targets["seg"])
    share = float(test.targets["seg"].float().mean())
    assert metrics["pixel_accuracy"] > max(share, 1 - share) + 0.1


def test_kept_head_swap_reproduces_the_swap_matrix_of_training(tiny_run):
    """The audit's paper protocol on the full test split equals what training recorded."""
    record = read_run_json(tiny_run)
    from metamorphosis.config import config_from_dict

    config = config_from_dict(record["config"])
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    producer = load_producer(tiny_run)
    test = extract_features(
        producer, data.test, names=[s.name for s in config.all_labels], mean=0.5, std=0.5
    )
    assert test.item_ids == data.test.item_ids
    with torch.no_grad():
        image, _ = data.test[0]
        alone = producer.encode(image[None])[0]
        # A batch of 1 and a batch of many take different conv / GEMM kernels (other blocking,
        # other summation order), so the same image's features differ in the last float32
        # bits: ~1e-6 relative per layer, a few 1e-5 after the encoder. 1e-4 of the feature
        # scale still catches a wrong transform or a wrong image (those differ by O(1)).
        scale = float(alone.abs().max())
        torch.testing.assert_close(test.sources["encoder"][0], alone, rtol=1e-4, atol=1e-4 * scale)
    kept = kept_head_swap(load_heads(tiny_run), list(config.all_labels), test)
    for source, row in record["swap_matrix"].items():
        for label, value in row.items():
            assert kept.matrix[source][label] == pytest.approx(value, abs=1e-6)


def test_label_floor_is_the_best_guess_from_the_public_labels():
    public = torch.tensor([0, 0, 0, 1, 1, 1])
    private = torch.tensor([0, 0, 1, 1, 1, 0])
    assert label_floor(public, private) == pytest.approx(4 / 6)  # 2 of 3 in each cell
    assert label_floor(public, public) == 1.0  # the task itself: no floor to hide under
    assert label_floor(torch.zeros(6), private) == pytest.approx(3 / 6)  # one cell: majority


def test_label_floor_is_undefined_for_dense_labels():
    assert label_floor(torch.zeros(4, 8, 8), torch.zeros(4)) is None
    assert label_floor(torch.zeros(4), torch.zeros(4, 8, 8)) is None
