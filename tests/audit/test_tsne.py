"""t-SNE of task features and their pairwise similarity (paper Fig. 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metamorphosis.audit.features import FeatureSet
from metamorphosis.audit.tsne import (
    ASSUMPTION,
    DEFAULT_SSIM_DATA_RANGE,
    feature_similarity,
    plot_tsne,
    tsne_embedding,
)
from metamorphosis.config import PrivacyConfig
from metamorphosis.errors import ConfigError

N = 60
SHAPE = (4, 4, 4)


def _features(sources: dict[str, torch.Tensor], n: int = N) -> FeatureSet:
    generator = torch.Generator().manual_seed(1)
    return FeatureSet(
        sources=sources,
        images=torch.zeros(n, 3, 8, 8),
        targets={
            "cls": torch.randint(0, 3, (n,), generator=generator),
            "flag": torch.randint(0, 2, (n,), generator=generator).float(),
            "seg": torch.zeros(n, 8, 8, dtype=torch.long),
        },
        item_ids=[f"item{i}" for i in range(n)],
    )


def _noise(seed: int, n: int = N) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_identical_sources_are_fully_similar():
    a = _noise(0)
    result = feature_similarity(_features({"a": a, "b": a.clone()}), ["a", "b"])
    assert result["ssim"]["a|b"] == pytest.approx(1.0, abs=1e-5)
    assert result["cosine"]["a|b"] == pytest.approx(1.0, abs=1e-6)
    assert result["items"] == N


def test_negation_and_independent_noise():
    a = _noise(0, 400)
    features = _features({"a": a, "neg": -a, "other": _noise(1, 400)}, 400)
    result = feature_similarity(features, ["a", "neg", "other"])
    assert set(result["cosine"]) == {"a|neg", "a|other", "neg|other"}
    assert result["cosine"]["a|neg"] == pytest.approx(-1.0, abs=1e-6)
    assert abs(result["cosine"]["a|other"]) < 0.05
    # SSIM is blind to a sign flip of signed features: the luminance and contrast-structure
    # terms are both about -1, so their product is about +1. Cosine is reported for that reason.
    assert result["ssim"]["a|neg"] > 0.9
    # On 4×4 maps the 3×3 window leaves 2×2 positions and SSIM of independent noise is ~0.15
    # (small-sample bias); on 8×8 maps it is ~0.
    wide = _features({"a": torch.randn(400, 4, 8, 8), "b": torch.randn(400, 4, 8, 8)}, 400)
    assert abs(feature_similarity(wide, ["a", "b"])["ssim"]["a|b"]) < 0.05


def test_default_data_range_is_the_training_one():
    assert PrivacyConfig().ssim_data_range == DEFAULT_SSIM_DATA_RANGE
    a, b = _noise(0), _noise(1) * 0.5 + _noise(0)
    features = _features({"a": a, "b": b})
    default = feature_similarity(features, ["a", "b"])
    assert default["data_range"] == DEFAULT_SSIM_DATA_RANGE
    wide = feature_similarity(features, ["a", "b"], data_range=100.0)
    assert wide["data_range"] == 100.0
    assert wide["ssim"]["a|b"] != pytest.approx(default["ssim"]["a|b"])


def test_similarity_is_batch_independent(monkeypatch):
    import metamorphosis.audit.tsne as tsne

    features = _features({"a": _noise(0), "b": _noise(0) + 0.3 * _noise(2)})
    whole = feature_similarity(features, ["a", "b"])
    monkeypatch.setattr(tsne, "_SIMILARITY_BATCH", 7)
    batched = feature_similarity(features, ["a", "b"])
    assert batched["ssim"]["a|b"] == pytest.approx(whole["ssim"]["a|b"], abs=1e-6)


def test_different_shapes_give_none():
    features = _features(
        {"a": _noise(0), "wide": torch.randn(N, 2, 4, 8), "big": _noise(1)[:, :, :2]}
    )
    result = feature_similarity(features, ["a", "wide", "big"])
    assert result["ssim"]["a|wide"] is None
    assert result["cosine"]["a|wide"] is not None  # same number of elements
    assert result["ssim"]["a|big"] is None and result["cosine"]["a|big"] is None


def test_unknown_source_is_an_error():
    with pytest.raises(ConfigError, match="unknown feature source"):
        feature_similarity(_features({"a": _noise(0)}), ["a", "nope"])


def test_distinct_sources_separate():
    a = _noise(0)
    result = tsne_embedding(_features({"a": a, "b": a + 10.0}), ["a", "b"], items=N, seed=0)
    assert result.separation >= 0.95
    assert set(result.points) == {"a", "b"}
    assert result.points["a"].shape == (N, 2)
    assert result.labels is None


def test_identical_sources_do_not_separate():
    a = _noise(0)
    result = tsne_embedding(_features({"a": a, "b": a.clone()}), ["a", "b"], items=N, seed=0)
    assert result.separation <= 0.7


def test_embedding_is_deterministic_and_subsets_items():
    features = _features({"a": _noise(0), "b": _noise(1)})
    first = tsne_embedding(features, ["a", "b"], items=40, seed=3, color_label="cls")
    second = tsne_embedding(features, ["a", "b"], items=40, seed=3, color_label="cls")
    np.testing.assert_array_equal(first.points["a"], second.points["a"])
    assert first.separation == second.separation
    assert first.items == 40 and len(set(first.item_ids)) == 40
    assert first.labels.dtype.kind == "i" and first.labels.shape == (40,)
    assert first.perplexity == pytest.approx(min(30.0, (80 - 1) / 3))
    summary = first.to_dict()
    assert {"sources", "items", "perplexity", "separation"} <= set(summary)
    assert all(not isinstance(v, np.ndarray) for v in summary.values())


def test_long_vectors_are_pca_reduced():
    features = _features({"a": torch.randn(N, 8, 4, 4), "b": torch.randn(N, 8, 4, 4)})
    result = tsne_embedding(features, ["a", "b"], items=N, seed=0)
    assert result.pca_components == 50


def test_bad_inputs():
    features = _features({"a": _noise(0), "small": torch.randn(N, 1, 4, 4)})
    with pytest.raises(ConfigError, match="one size"):
        tsne_embedding(features, ["a", "small"], items=N, seed=0)
    with pytest.raises(ConfigError, match="at least two sources"):
        tsne_embedding(features, ["a"], items=N, seed=0)
    with pytest.raises(ConfigError, match="distinct"):
        tsne_embedding(features, ["a", "a"], items=N, seed=0)


def test_dense_label_cannot_colour():
    features = _features({"a": _noise(0), "b": _noise(1)})
    with pytest.raises(ConfigError, match="classification"):
        tsne_embedding(features, ["a", "b"], items=N, seed=0, color_label="seg")


def test_plot_writes_png(tmp_path):
    features = _features({"a": _noise(0), "b": _noise(0) + 5.0})
    with_labels = tsne_embedding(features, ["a", "b"], items=30, seed=0, color_label="flag")
    path = plot_tsne(with_labels, tmp_path / "figs" / "tsne.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    without = tsne_embedding(features, ["a", "b"], items=30, seed=0)
    assert plot_tsne(without, tmp_path / "plain.png").read_bytes()[:4] == b"\x89PNG"


def test_assumption_is_stated():
    assert "t-SNE" in ASSUMPTION and "SSIM" in ASSUMPTION
