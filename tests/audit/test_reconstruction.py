"""The reconstruction attack inverts what can be inverted and nothing else.

The features are generated here, not by a producer, so the truth is known:
an identity source and a pixel-unshuffled one (lossless, 12×8×8) must be
redrawn far better than the mean-image baseline, while a source of zeros or
of image-independent noise must not beat it. Images are smooth random
16×16 pictures (4×4 noise upsampled bilinearly): structured enough that a
decoder can learn them, varied enough that the baseline is poor.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from metamorphosis.audit.attacks.reconstruction import (
    ASSUMPTION,
    ReconstructionDecoder,
    ReconstructionResult,
    image_scores,
    plot_reconstructions,
    reconstruction_attack,
)
from metamorphosis.audit.budget import AttackBudget
from metamorphosis.audit.features import FeatureSet
from metamorphosis.errors import ConfigError

SIZE = 16
SOURCES = ("identity", "unshuffle", "zeros", "noise")
# Measured on seeds 0-3 (6 epochs, width 32, 256 train / 64 test items): identity 24.5-25.4 dB
# and SSIM 0.955-0.960, unshuffle 22.6-24.0 dB and SSIM 0.90-0.94, against a mean-image baseline
# of 13.45 dB and SSIM 0.08; zeros and noise land within 0.1 dB of the baseline.
BUDGET = AttackBudget(
    name="test",
    train_items=None,
    test_items=None,
    epochs=1,
    reconstruction_epochs=6,
    batch_size=32,
    lr=3e-3,
    tsne_items=10,
)
WIDTH = 32  # a slim attacker keeps the file fast; the default (128) only does better


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """``count`` smooth random RGB images in [0, 1] (4×4 noise upsampled to 16×16)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 3, 4, 4, generator=generator)
    return F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def feature_set(images: torch.Tensor, seed: int) -> FeatureSet:
    """Every test source for ``images``: two invertible mappings and two uninformative ones."""
    generator = torch.Generator().manual_seed(seed)
    count = int(images.shape[0])
    return FeatureSet(
        sources={
            "identity": images.clone(),
            "unshuffle": F.pixel_unshuffle(images, 2),  # 12×8×8, a lossless rearrangement
            # Same shape as "identity", so only the information differs.
            "zeros": torch.zeros(count, 3, SIZE, SIZE),
            "noise": torch.rand(count, 3, SIZE, SIZE, generator=generator),  # independent of x
        },
        images=images,
        targets={},
        item_ids=[str(i) for i in range(count)],
    )


@pytest.fixture(scope="module")
def splits() -> tuple[FeatureSet, FeatureSet]:
    return feature_set(smooth_images(256, seed=0), seed=10), feature_set(
        smooth_images(64, seed=1), seed=11
    )


@pytest.fixture(scope="module")
def result(splits: tuple[FeatureSet, FeatureSet]) -> ReconstructionResult:
    train, test = splits
    return reconstruction_attack(
        train, test, sources=SOURCES, budget=BUDGET, seed=0, n_examples=4, width=WIDTH
    )


# --- metrics -------------------------------------------------------------------------------------


def test_scores_of_an_image_with_itself_are_perfect_and_finite() -> None:
    images = smooth_images(3, seed=2)
    scores = image_scores(images, images)
    assert scores["psnr"].tolist() == pytest.approx([100.0] * 3)  # MSE floored at 1e-10
    assert scores["ssim"].tolist() == pytest.approx([1.0] * 3, abs=1e-9)
    assert scores["ms_ssim"].tolist() == pytest.approx([1.0] * 3, abs=1e-9)


def test_psnr_is_per_image_then_averaged() -> None:
    target = torch.full((2, 3, SIZE, SIZE), 0.5)
    shift = torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    psnr = image_scores(target + shift, target)["psnr"]
    # MSE 1e-2 -> 20 dB and 1e-4 -> 40 dB; the mean is 30 dB, not the PSNR of the mean MSE.
    assert psnr.tolist() == pytest.approx([20.0, 40.0], abs=1e-3)


# --- decoder -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [
        ((4, 4), (16, 16)),
        ((8, 8), (16, 16)),
        ((16, 16), (16, 16)),
        ((5, 5), (20, 20)),
        ((4, 4), (18, 18)),
        ((3, 5), (12, 20)),
        ((32, 32), (16, 16)),
    ],
)
def test_decoder_output_shape_and_range(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    decoder = ReconstructionDecoder(6, in_hw, out_hw, width=16)
    with torch.no_grad():
        out = decoder(torch.randn(2, 6, *in_hw) * 5)
    assert out.shape == (2, 3, *out_hw)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_decoder_stages_upsample_at_most_twofold_and_end_on_the_image_size() -> None:
    decoder = ReconstructionDecoder(6, (4, 4), (18, 18))
    assert decoder.stage_sizes == [(8, 8), (16, 16), (18, 18)]
    assert ReconstructionDecoder(6, (16, 16), (16, 16)).stage_sizes == []
    widths = [block[0].out_channels for block in ReconstructionDecoder(6, (2, 2), (32, 32)).stages]
    assert widths == [64, 32, 32, 32]  # halving from 128, never under 32


def test_decoder_rejects_features_of_the_wrong_size() -> None:
    decoder = ReconstructionDecoder(3, (8, 8), (16, 16), width=16)
    with pytest.raises(ConfigError, match="8x8"):
        decoder(torch.zeros(1, 3, 4, 4))


# --- the attack ----------------------------------------------------------------------------------


def test_baseline_is_the_mean_training_image(
    result: ReconstructionResult, splits: tuple[FeatureSet, FeatureSet]
) -> None:
    train, test = splits
    mean = train.images.mean(dim=0, keepdim=True).expand_as(test.images)
    expected = float((-10 * torch.log10((mean - test.images).pow(2).flatten(1).mean(1))).mean())
    assert result.baseline["psnr"] == pytest.approx(expected, abs=1e-4)
    assert result.baseline["ssim"] < 0.3  # knowing nothing does not redraw structure


@pytest.mark.parametrize(("source", "min_ssim"), [("identity", 0.85), ("unshuffle", 0.8)])
def test_invertible_features_are_reconstructed_well(
    result: ReconstructionResult, source: str, min_ssim: float
) -> None:
    scores = result.scores[source]
    assert scores["psnr"] > result.baseline["psnr"] + 6.0, (scores, result.baseline)
    assert result.psnr_gain(source) > 6.0
    assert scores["ssim"] > min_ssim, scores
    assert scores["ms_ssim"] > min_ssim, scores


@pytest.mark.parametrize("source", ["zeros", "noise"])
def test_uninformative_features_do_not_beat_the_baseline(
    result: ReconstructionResult, source: str
) -> None:
    scores = result.scores[source]
    assert scores["psnr"] < result.baseline["psnr"] + 0.5, (scores, result.baseline)
    assert scores["psnr"] > result.baseline["psnr"] - 1.0, (scores, result.baseline)
    assert scores["ssim"] < result.baseline["ssim"] + 0.1, (scores, result.baseline)


def test_result_holds_examples_and_a_json_summary(
    result: ReconstructionResult, splits: tuple[FeatureSet, FeatureSet]
) -> None:
    _, test = splits
    assert result.sources == list(SOURCES)
    assert torch.equal(result.originals, test.images[:4])
    for source in SOURCES:
        assert result.examples[source].shape == (4, 3, SIZE, SIZE)
    # The kept examples are the scored reconstructions of the first test images, in order.
    identity = image_scores(result.examples["identity"], result.originals)["psnr"].mean()
    assert float(identity) > result.baseline["psnr"] + 6.0
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["sources"] == list(SOURCES)
    assert summary["n_test"] == 64 and summary["n_train"] == 256
    assert summary["assumption"] == ASSUMPTION
    assert set(summary["scores"]["noise"]) == {"psnr", "ssim", "ms_ssim"}
    assert all(math.isfinite(v) for m in summary["scores"].values() for v in m.values())
    assert "examples" not in summary and "originals" not in summary


def test_same_seed_gives_identical_scores_whatever_else_is_attacked(
    splits: tuple[FeatureSet, FeatureSet],
) -> None:
    train, test = splits
    train, test = train.select(range(64)), test.select(range(16))
    budget = AttackBudget(
        name="tiny",
        train_items=None,
        test_items=None,
        epochs=1,
        reconstruction_epochs=1,
        batch_size=32,
        lr=3e-3,
        tsne_items=10,
    )

    def run(sources: list[str], seed: int) -> ReconstructionResult:
        return reconstruction_attack(
            train, test, sources=sources, budget=budget, seed=seed, n_examples=2, width=16
        )

    first = run(["zeros", "unshuffle"], seed=5)
    again = run(["unshuffle"], seed=5)
    other = run(["unshuffle"], seed=6)
    assert again.scores["unshuffle"] == first.scores["unshuffle"]
    assert torch.equal(again.examples["unshuffle"], first.examples["unshuffle"])
    assert other.scores["unshuffle"] != first.scores["unshuffle"]


def test_unknown_or_missing_sources_are_config_errors(
    splits: tuple[FeatureSet, FeatureSet],
) -> None:
    train, test = splits
    with pytest.raises(ConfigError, match=r"'nope'.*identity"):
        reconstruction_attack(train, test, sources=["identity", "nope"], budget=BUDGET)
    with pytest.raises(ConfigError, match="at least one"):
        reconstruction_attack(train, test, sources=[], budget=BUDGET)
    with pytest.raises(ConfigError, match="repeated"):
        reconstruction_attack(train, test, sources=["zeros", "zeros"], budget=BUDGET)


def test_plot_writes_a_png(result: ReconstructionResult, tmp_path) -> None:
    path = plot_reconstructions(result, tmp_path / "figures" / "reconstruction.png")
    assert path == tmp_path / "figures" / "reconstruction.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
