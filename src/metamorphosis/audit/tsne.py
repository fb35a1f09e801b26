"""How different are the features each task's module publishes for the same input?

MetaMorphosis gives every task its own metamorphosis module ``g_t`` on top of a
shared encoder and penalises the SSIM between the modules' outputs, so that the
features published for one task are of little use for another. Paper Fig. 6
shows this with a t-SNE of the task features of the same inputs: each module's
features form their own cluster. This module reproduces that figure and backs
it with numbers:

* :func:`feature_similarity`: the mean per-input SSIM and cosine similarity
  between every pair of sources, the quantity the training penalty acts on;
* :func:`tsne_embedding`: a joint t-SNE of all sources' per-input feature
  vectors, with ``separation``, the cross-validated accuracy of a 5-nearest-
  neighbour classifier that tells the source from the 2-D point;
* :func:`plot_tsne`: the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import PrivacyConfig
from ..errors import ConfigError
from ..losses.task_privacy import mean_pairwise_similarity
from .attacks.base import Attack, AuditContext
from .document import Document, percent
from .features import FeatureSet, subset_indices

__all__ = [
    "ASSUMPTION",
    "DEFAULT_SSIM_DATA_RANGE",
    "TsneComparison",
    "TsneResult",
    "feature_similarity",
    "plot_tsne",
    "tsne_embedding",
]

ASSUMPTION = (
    "The t-SNE is a visual aid: separate clusters show that each task's module publishes "
    "features unlike the others' for the same input, not how much an attacker can recover "
    "from them (the attacks measure that). The SSIM numbers are what the training penalty "
    "minimises (same data range; blind to sign flips), the cosine numbers whether the "
    "feature vectors point the same way."
)
"""What the t-SNE and similarity measurements show and what they do not."""

DEFAULT_SSIM_DATA_RANGE: float = PrivacyConfig.ssim_data_range
"""The training default of ``privacy.ssim_data_range``: the SSIM the penalty sees."""

SEPARATION_NEIGHBOURS = 5
"""k of the k-nearest-neighbour classifier behind ``separation``."""

PCA_COMPONENTS = 50
"""Feature vectors longer than this are PCA-reduced before t-SNE (standard practice)."""

_SIMILARITY_BATCH = 256  # items per SSIM call: bounds memory on large feature maps


def _pair_key(a: str, b: str) -> str:
    return f"{a}|{b}"


def _checked_sources(features: FeatureSet, sources: Sequence[str]) -> list[str]:
    names = list(sources)
    unknown = [name for name in names if name not in features.sources]
    if unknown:
        raise ConfigError(
            f"unknown feature source(s) {unknown}; this feature set has {list(features.sources)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"feature sources must be distinct, got {names}")
    if len(features) == 0:
        raise ConfigError("the feature set is empty: nothing to compare")
    return names


def _mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean over items of the cosine between the flattened per-item feature vectors."""
    flat_a = a.reshape(a.shape[0], -1).double()
    flat_b = b.reshape(b.shape[0], -1).double()
    return float(F.cosine_similarity(flat_a, flat_b, dim=1).mean())


def _mean_ssim(a: Tensor, b: Tensor, data_range: float) -> float:
    """Mean over items of the per-item SSIM, computed a batch at a time."""
    total = 0.0
    for start in range(0, a.shape[0], _SIMILARITY_BATCH):
        chunk_a = a[start : start + _SIMILARITY_BATCH].float()
        chunk_b = b[start : start + _SIMILARITY_BATCH].float()
        means = mean_pairwise_similarity({"a": chunk_a, "b": chunk_b}, data_range=data_range)
        total += means[("a", "b")] * chunk_a.shape[0]
    return total / a.shape[0]


def feature_similarity(
    features: FeatureSet,
    sources: Sequence[str],
    *,
    data_range: float | None = None,
) -> dict[str, Any]:
    """Mean per-input similarity between every unordered pair of feature sources.

    For each pair ``(a, b)`` (``a`` before ``b`` in ``sources``) and each input
    ``x``, the features ``a(x)`` and ``b(x)`` are compared; the values are
    averaged over the inputs. Low values mean the two modules publish
    different features for the same input, which is what the task-privacy
    penalty trains for.

    Args:
        features: the extracted features.
        sources: names in ``features.sources`` (``"encoder"`` and module names).
        data_range: SSIM dynamic range. Features are unbounded, so there is no
            natural range; ``None`` uses the training default
            (:data:`DEFAULT_SSIM_DATA_RANGE`, ``privacy.ssim_data_range``) so the
            number is the one the training penalty computed. Pass the run's
            ``config.privacy.ssim_data_range`` when it was changed.

    SSIM was designed for non-negative images: on signed features the
    luminance term flips sign together with the contrast-structure term, so
    ``SSIM(g, -g)`` is close to +1, not -1. The cosine, which sees the sign, is
    reported next to it for that reason.

    Returns:
        ``{"ssim": {"a|b": float | None}, "cosine": {"a|b": float | None},
        "data_range": float, "items": int}``. SSIM is ``None`` for a pair whose
        feature maps differ in shape, cosine ``None`` when their sizes differ.

    Raises:
        ConfigError: unknown or repeated source, or an empty feature set.
    """
    names = _checked_sources(features, sources)
    data_range = DEFAULT_SSIM_DATA_RANGE if data_range is None else float(data_range)
    ssim: dict[str, float | None] = {}
    cosine: dict[str, float | None] = {}
    for a, b in combinations(names, 2):
        left, right = features.sources[a], features.sources[b]
        key = _pair_key(a, b)
        same_shape = left.shape == right.shape and left.dim() == 4
        ssim[key] = _mean_ssim(left, right, data_range) if same_shape else None
        same_size = left[0].numel() == right[0].numel()
        cosine[key] = _mean_cosine(left, right) if same_size else None
    return {"ssim": ssim, "cosine": cosine, "data_range": data_range, "items": len(features)}


@dataclass
class TsneResult:
    """A joint t-SNE of several feature sources over the same inputs.

    Attributes:
        sources: the embedded sources, in order.
        points: source -> ``items``×2 embedding; row ``i`` of every source is input ``i``.
        labels: ``color_label`` class of each input (ints), or None.
        color_label: the label that ``labels`` holds, or None.
        item_ids: dataset ids of the embedded inputs.
        perplexity: the t-SNE perplexity used.
        seed: seed of the item subset, PCA, t-SNE and the separation folds.
        separation: cross-validated accuracy of a k-NN classifier predicting the
            source from the 2-D point (1.0: separate clusters; about
            ``1/len(sources)`` or below: indistinguishable; exact copies score below
            chance, since a point's nearest neighbour is then its copy).
        pca_components: dimensionality the vectors were PCA-reduced to before
            t-SNE, or None when they were embedded as they are.
    """

    sources: list[str]
    points: dict[str, np.ndarray]
    labels: np.ndarray | None
    color_label: str | None
    item_ids: list[str]
    perplexity: float
    seed: int
    separation: float
    pca_components: int | None

    @property
    def items(self) -> int:
        return len(self.item_ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no arrays) for the audit report."""
        return {
            "sources": list(self.sources),
            "items": self.items,
            "perplexity": float(self.perplexity),
            "seed": int(self.seed),
            "separation": float(self.separation),
            "separation_chance": 1.0 / len(self.sources),
            "separation_method": f"{SEPARATION_NEIGHBOURS}-NN accuracy, stratified 5-fold CV",
            "pca_components": self.pca_components,
            "color_label": self.color_label,
        }


def _class_labels(features: FeatureSet, name: str) -> np.ndarray:
    """The classification targets of ``name`` as a 1-D int array."""
    if name not in features.targets:
        raise ConfigError(f"unknown label {name!r}; this feature set has {list(features.targets)}")
    target = features.targets[name]
    if target.dim() == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 1:
        raise ConfigError(
            f"label {name!r} has targets of shape {tuple(target.shape)}: only classification "
            "labels (one class per input) can colour a t-SNE"
        )
    if target.is_floating_point():
        if not torch.equal(target.round(), target):
            raise ConfigError(f"label {name!r} has non-integer targets: not a classification label")
        target = target.round()
    return target.long().numpy()


def _joint_matrix(features: FeatureSet, names: list[str]) -> np.ndarray:
    """Rows of every source's flattened per-input features, source after source."""
    blocks = [features.sources[name].reshape(len(features), -1).double().numpy() for name in names]
    dims = {name: block.shape[1] for name, block in zip(names, blocks, strict=True)}
    if len(set(dims.values())) != 1:
        raise ConfigError(
            f"sources can only be embedded jointly if their features have one size, got {dims}"
        )
    return np.concatenate(blocks, axis=0)


def _reduce(matrix: np.ndarray, seed: int) -> tuple[np.ndarray, int | None]:
    """PCA to :data:`PCA_COMPONENTS` dims when the vectors are longer (speeds up t-SNE)."""
    from sklearn.decomposition import PCA

    if matrix.shape[1] <= PCA_COMPONENTS:
        return matrix, None
    components = min(PCA_COMPONENTS, matrix.shape[0])
    return PCA(n_components=components, random_state=seed).fit_transform(matrix), components


def _separation(points: np.ndarray, groups: np.ndarray, seed: int) -> float:
    """Cross-validated k-NN accuracy of the source given the 2-D point."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = min(5, int(np.bincount(groups).min()))
    neighbours = min(SEPARATION_NEIGHBOURS, len(points) - len(points) // folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    classifier = KNeighborsClassifier(n_neighbors=neighbours)
    return float(cross_val_score(classifier, points, groups, cv=splitter).mean())


def tsne_embedding(
    features: FeatureSet,
    sources: Sequence[str],
    *,
    items: int,
    seed: int,
    color_label: str | None = None,
) -> TsneResult:
    """Embed several sources' features of the same inputs jointly with t-SNE.

    All sources' per-input vectors go into one t-SNE so their relative
    positions are comparable (paper Fig. 6). Vectors are not standardised per
    source: a module that only rescales the encoder output should not look
    identical to it. Vectors longer than :data:`PCA_COMPONENTS` are PCA-reduced
    first, the usual preprocessing for t-SNE.

    Args:
        features: the extracted features.
        sources: at least two names in ``features.sources`` whose features have
            the same number of elements.
        items: number of inputs to embed (a seeded random subset when fewer than
            the feature set holds); each source contributes one point per input.
        seed: seed of the subset, PCA, t-SNE and the separation folds.
        color_label: a classification label whose classes colour the second
            panel of :func:`plot_tsne`.

    Raises:
        ConfigError: unknown, repeated or too few sources, sources of different
            sizes, fewer than two items, or a ``color_label`` that is not a
            classification label.
    """
    from sklearn.manifold import TSNE

    names = _checked_sources(features, sources)
    if len(names) < 2:
        raise ConfigError(f"t-SNE separation needs at least two sources, got {names}")
    chosen = features.select(subset_indices(len(features), items, seed))
    if len(chosen) < 2:
        raise ConfigError(f"t-SNE needs at least two items, got {len(chosen)}")
    labels = _class_labels(chosen, color_label) if color_label is not None else None
    matrix, components = _reduce(_joint_matrix(chosen, names), seed)
    n = matrix.shape[0]
    perplexity = min(30.0, (n - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    embedded = tsne.fit_transform(matrix)
    per_source = len(chosen)
    groups = np.repeat(np.arange(len(names)), per_source)
    return TsneResult(
        sources=names,
        points={
            name: embedded[i * per_source : (i + 1) * per_source] for i, name in enumerate(names)
        },
        labels=labels,
        color_label=color_label,
        item_ids=list(chosen.item_ids),
        perplexity=perplexity,
        seed=seed,
        separation=_separation(embedded, groups, seed),
        pca_components=components,
    )


_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")


def plot_tsne(result: TsneResult, path: str | Path) -> Path:
    """Save the t-SNE figure as a PNG and return its path.

    Left: points coloured by source (the Fig. 6 view: one cluster per module).
    Right, when the result has labels: the same points coloured by the label's
    class, one marker per source, to show whether a source's layout follows
    that label.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = 2 if result.labels is not None else 1
    figure = Figure(figsize=(5.5 * panels, 5.0), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    by_source = axes[0]
    for name in result.sources:
        pts = result.points[name]
        by_source.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.7, label=name)
    by_source.set_title(f"by source (k-NN separation {result.separation:.2f})")
    by_source.legend(loc="best", fontsize="small", markerscale=1.5)
    if result.labels is not None:
        by_label = axes[1]
        classes = np.unique(result.labels)
        cmap = colormaps["tab10" if len(classes) <= 10 else "viridis"]
        colours = {
            c: cmap(i if len(classes) <= 10 else i / max(len(classes) - 1, 1))
            for i, c in enumerate(classes)
        }
        for i, name in enumerate(result.sources):
            pts = result.points[name]
            marker = _MARKERS[i % len(_MARKERS)]
            by_label.scatter(
                pts[:, 0],
                pts[:, 1],
                s=10,
                alpha=0.7,
                marker=marker,
                c=[colours[c] for c in result.labels],
                label=name,
            )
        handles = [
            Line2D([], [], color=colours[c], marker="o", linestyle="", label=f"class {c}")
            for c in classes
        ] + [
            Line2D(
                [], [], color="grey", marker=_MARKERS[i % len(_MARKERS)], linestyle="", label=name
            )
            for i, name in enumerate(result.sources)
        ]
        by_label.legend(handles=handles, loc="best", fontsize="small", title=result.color_label)
        by_label.set_title(f"by {result.color_label} (marker = source)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path


class TsneComparison(Attack):
    """``tsne`` and ``similarity`` of the report: every module's features compared (needs two)."""

    name = "tsne"
    stage = "t-SNE"
    assumes = ASSUMPTION

    def measure(self, context: AuditContext, report: Mapping[str, Any]) -> dict[str, Any]:
        names = [spec.name for spec in context.labels]
        if len(names) < 2:  # one module: nothing to compare
            return {"tsne": None, "similarity": {}}
        classes = [s.name for s in (*context.private, *context.labels) if not s.is_dense]
        color = classes[0] if classes else None  # t-SNE points take one class per item
        embedding = tsne_embedding(
            context.test,
            names,
            items=context.budget.tsne_items,
            seed=context.seed,
            color_label=color,
        )
        plot_tsne(embedding, context.out_dir / "tsne.png")
        return {
            "tsne": embedding.to_dict(),
            "similarity": feature_similarity(context.test, names),
        }

    def section(self, doc: Document, report: Mapping[str, Any]) -> None:
        tsne = report.get("tsne")
        if not tsne:  # a producer with one module has nothing to compare
            return
        doc.heading("Task features compared (t-SNE)")
        doc.paragraph(self.assumes)
        if tsne.get("separation") is not None:
            doc.paragraph(
                f"Separation of the sources in the embedding (accuracy of predicting the source "
                f"from the 2-D point; chance {percent(1 / len(tsne['sources']))}): "
                f"{percent(tsne['separation'])}."
            )
        similarity = report.get("similarity") or {}
        pairs = sorted(set(similarity.get("ssim", {})) | set(similarity.get("cosine", {})))
        if pairs:
            doc.table(
                ["pair", "mean SSIM", "mean cosine"],
                [
                    [
                        p.replace("|", " / "),
                        _maybe(similarity.get("ssim", {}).get(p)),
                        _maybe(similarity.get("cosine", {}).get(p)),
                    ]
                    for p in pairs
                ],
            )
        doc.figure("tsne.png", "t-SNE of the features of the same test images, per source")


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
