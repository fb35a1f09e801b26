"""Reconstruction attack: can an attacker invert published features to images?

MetaMorphosis claims (paper Fig. 8b) that a task's published features carry
what the task needs and little of the image itself, while the shared encoder
output ``E(x)`` keeps enough to redraw the input. This module measures that
claim with a learned inverse rather than by eye.

Threat model. The attacker can query the producer with images of its own
choosing and observe the features it publishes, so it holds pairs
``(features, image)`` (the audit's train split). It trains a decoder from
features to pixels on those pairs and is then scored on held-out test images
it never saw, of which it only receives the features. A source whose decoder
does no better than the trivial attacker that always answers the mean
training image leaks nothing this attacker can use; a large margin over that
baseline means the features let an outsider redraw private images.

Scores are PSNR (dB, from the per-image MSE on [0, 1] pixels), SSIM and
MS-SSIM (our fitted-window implementations, so small images still get a true
SSIM), each averaged over the test images.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...losses.ssim import ms_ssim_per_sample, ssim_per_sample
from ...models.decoders import ReconstructionDecoder
from ..budget import AttackBudget
from ..document import Document
from ..features import FeatureSet
from ..fitting import fit, predict
from .base import Attack, AuditContext, Finding, finding

__all__ = [
    "ASSUMPTION",
    "METRICS",
    "Reconstruction",
    "ReconstructionDecoder",
    "ReconstructionResult",
    "image_scores",
    "plot_reconstructions",
    "reconstruction_attack",
]

ASSUMPTION = (
    "The attacker observes the producer's published features for images of its own choosing "
    "(the train split, as feature-image pairs) and trains a decoder from features to pixels; "
    "it is scored on held-out test images it never saw, from their features alone."
)
"""The reconstruction attacker's threat model, in words for the report."""

METRICS = ("psnr", "ssim", "ms_ssim")
"""The per-source scores, in report order."""

#: Reconstruction PSNR within this many dB of the universal features' is "as invertible".
SAME_PSNR_DB = 0.5
#: Reconstruction within this many dB of the mean-image guess has learnt nothing.
NO_BETTER_THAN_GUESS_DB = 1.0

_MSE_FLOOR = 1e-10  # caps PSNR at 100 dB for a perfect reconstruction instead of +inf
_SCORE_CHUNK = 256  # test items decoded and scored at a time, so large test sets fit in memory


@dataclass
class ReconstructionResult:
    """What the reconstruction attack achieved on each feature source.

    Attributes:
        scores: source -> {"psnr", "ssim", "ms_ssim"}, means over the test items.
        baseline: the same metrics for the trivial attacker that answers the
            mean training image for every test image (what knowing nothing gives).
        examples: source -> reconstructions of the first K test images (CPU, K×3×H×W).
        originals: those K test images (CPU, K×3×H×W).
        n_train: feature-image pairs each decoder was trained on.
        n_test: held-out test images the scores average over.
    """

    scores: dict[str, dict[str, float]]
    baseline: dict[str, float]
    examples: dict[str, Tensor] = field(repr=False)
    originals: Tensor = field(repr=False)
    n_train: int = 0
    n_test: int = 0

    @property
    def sources(self) -> list[str]:
        """The attacked sources, in the order they were attacked."""
        return list(self.scores)

    def psnr_gain(self, source: str) -> float:
        """PSNR of ``source`` above the mean-image baseline in dB (> 0: beats knowing nothing)."""
        return self.scores[source]["psnr"] - self.baseline["psnr"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary for the report (scores only, no image tensors)."""
        return {
            "assumption": ASSUMPTION,
            "sources": self.sources,
            "n_train": int(self.n_train),
            "n_test": int(self.n_test),
            "scores": {s: {k: float(v) for k, v in m.items()} for s, m in self.scores.items()},
            "baseline": {k: float(v) for k, v in self.baseline.items()},
            "psnr_gain_db": {s: float(self.psnr_gain(s)) for s in self.scores},
        }


def image_scores(predictions: Tensor, images: Tensor) -> dict[str, Tensor]:
    """Per-image PSNR (dB), SSIM and MS-SSIM of ``predictions`` against ``images``.

    Both are N×3×H×W in [0, 1]. PSNR comes from each image's own MSE (floored
    at 1e-10, so a perfect copy scores 100 dB rather than infinity), and the
    means of these per-image values are what the report states.

    Returns:
        metric name -> tensor of shape (N,) (float64, CPU).
    """
    x = predictions.detach().to("cpu", torch.float64).clamp(0.0, 1.0)
    y = images.detach().to("cpu", torch.float64)
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp_min(_MSE_FLOOR)
    return {
        "psnr": -10.0 * torch.log10(mse),
        "ssim": ssim_per_sample(x, y, data_range=1.0),
        "ms_ssim": ms_ssim_per_sample(x, y, data_range=1.0),
    }


def _source_seed(seed: int, source: str) -> int:
    """``seed`` plus a stable per-name offset: a source's result does not depend on
    which other sources are attacked alongside it, or in which order."""
    return seed + zlib.crc32(source.encode("utf-8")) % 100_003


def _check_inputs(train: FeatureSet, test: FeatureSet, sources: Sequence[str]) -> list[str]:
    if isinstance(sources, str):
        sources = [sources]
    names = list(sources)
    if not names:
        raise ConfigError(
            f"reconstruction attack needs at least one feature source; "
            f"available: {sorted(train.sources)}"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"reconstruction sources are repeated: {duplicates}")
    if len(train) < 1 or len(test) < 1:
        raise ConfigError(
            f"reconstruction attack needs train and test items, got {len(train)} and {len(test)}"
        )
    if train.images.shape[1:] != test.images.shape[1:] or train.images.shape[1] != 3:
        raise ConfigError(
            f"train and test images must both be N×3×H×W of one size, got "
            f"{tuple(train.images.shape)} and {tuple(test.images.shape)}"
        )
    for name in names:
        for split, features in (("train", train), ("test", test)):
            if name not in features.sources:
                raise ConfigError(
                    f"feature source {name!r} is unknown in the {split} split: "
                    f"available sources are {sorted(features.sources)}"
                )
        shape_train = train.sources[name].shape
        shape_test = test.sources[name].shape
        if len(shape_train) != 4 or shape_train[1:] != shape_test[1:]:
            raise ConfigError(
                f"feature source {name!r} must be N×C×h×w with one shape in both splits, got "
                f"{tuple(shape_train)} (train) and {tuple(shape_test)} (test)"
            )
    return names


def reconstruction_attack(
    train: FeatureSet,
    test: FeatureSet,
    *,
    sources: Sequence[str],
    budget: AttackBudget,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    n_examples: int = 8,
    width: int = 128,
) -> ReconstructionResult:
    """Train one decoder per feature source on ``train`` and score it on ``test``.

    Each decoder is fresh, trained with MSE against the train images for
    ``budget.reconstruction_epochs`` epochs, and seeded with ``seed`` plus a
    stable offset derived from the source's name, so the same call gives the
    same scores. See the module docstring for the threat model.

    Args:
        train: the attacker's feature-image pairs.
        test: the held-out items it is scored on.
        sources: names in ``train.sources`` to attack (e.g. ``"encoder"`` and
            each label's module).
        budget: the declared attack budget (epochs, batch size, learning rate).
        seed: base seed of decoder initialisation and minibatch order.
        device: where the decoders train; results come back to the CPU.
        progress: show progress bars.
        n_examples: reconstructions of the first ``n_examples`` test images
            to keep per source (for the figure).
        width: stem width of each :class:`ReconstructionDecoder` (attacker
            capacity; the default is the audit's attacker, tests use less).

    Returns:
        The per-source scores, the mean-image baseline and example images.

    Raises:
        ConfigError: an unknown, repeated or empty set of sources, or splits
            that do not fit together.
    """
    names = _check_inputs(train, test, sources)
    if not isinstance(n_examples, int) or n_examples < 0:
        raise ConfigError(f"n_examples={n_examples!r} is invalid: expected an integer >= 0")
    keep = min(n_examples, len(test))
    out_hw = (int(train.images.shape[-2]), int(train.images.shape[-1]))
    train_images = train.images.float()
    test_images = test.images.float()

    mean_image = train_images.mean(dim=0, keepdim=True).clamp(0.0, 1.0)
    baseline = _mean_scores(
        image_scores(mean_image.expand_as(chunk), chunk) for _, chunk in _chunks(test_images)
    )

    scores: dict[str, dict[str, float]] = {}
    examples: dict[str, Tensor] = {}
    for name in names:
        inputs = train.sources[name].float()
        source_seed = _source_seed(seed, name)
        torch.manual_seed(source_seed)  # decoder initialisation, before fit reseeds its own loop
        decoder = ReconstructionDecoder(
            int(inputs.shape[1]),
            (int(inputs.shape[-2]), int(inputs.shape[-1])),
            out_hw,
            width=width,
        )
        fit(
            decoder,
            inputs,
            train_images,
            F.mse_loss,
            budget=budget,
            epochs=budget.reconstruction_epochs,
            seed=source_seed,
            device=device,
            progress=progress,
            description=f"reconstruct {name}",
        )
        test_inputs = test.sources[name].float()
        per_chunk: list[dict[str, Tensor]] = []
        shown: list[Tensor] = []
        for start, chunk in _chunks(test_images):
            decoded = predict(
                decoder, test_inputs[start : start + _SCORE_CHUNK], device=device
            ).clamp(0.0, 1.0)
            per_chunk.append(image_scores(decoded, chunk))
            if start < keep:
                shown.append(decoded[: keep - start])
        scores[name] = _mean_scores(per_chunk)
        examples[name] = torch.cat(shown) if shown else test_images[:0].clone()
        decoder.cpu()

    return ReconstructionResult(
        scores=scores,
        baseline=baseline,
        examples=examples,
        originals=test_images[:keep].clone(),
        n_train=len(train),
        n_test=len(test),
    )


def _chunks(images: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(start, images[start:start + chunk]) over the test set."""
    for start in range(0, int(images.shape[0]), _SCORE_CHUNK):
        yield start, images[start : start + _SCORE_CHUNK]


def _mean_scores(per_chunk: Iterable[dict[str, Tensor]]) -> dict[str, float]:
    """Means over all items of per-item metric tensors gathered chunk by chunk."""
    gathered: dict[str, list[Tensor]] = {}
    for chunk in per_chunk:
        for key, value in chunk.items():
            gathered.setdefault(key, []).append(value)
    return {key: float(torch.cat(gathered[key]).mean()) for key in METRICS}


def plot_reconstructions(result: ReconstructionResult, path: str | Path) -> Path:
    """Save a grid of originals (first row) and each source's reconstructions as a PNG.

    Each row is labelled with its source and the source's test PSNR / SSIM, so
    the figure can be read next to the numbers. Uses a standalone
    :class:`~matplotlib.figure.Figure`, not pyplot, so it needs no display and
    leaves no global state behind.

    Args:
        result: a :func:`reconstruction_attack` result with at least one example.
        path: the PNG to write (parent folders are created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.figure import Figure

    count = int(result.originals.shape[0])
    if count < 1:
        raise ConfigError("no reconstruction examples to plot: run the attack with n_examples >= 1")
    rows: list[tuple[str, Tensor]] = [("original", result.originals)]
    for name in result.sources:
        metrics = result.scores[name]
        label = f"{name}\nPSNR {metrics['psnr']:.1f} dB\nSSIM {metrics['ssim']:.2f}"
        rows.append((label, result.examples[name]))

    fig = Figure(figsize=(1.2 * count + 1.4, 1.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), count, squeeze=False)
    for row, (label, images) in enumerate(rows):
        for col in range(count):
            ax = axes[row][col]
            image = images[col].detach().float().clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy()
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(
        f"Reconstruction attack (mean-image baseline PSNR {result.baseline['psnr']:.1f} dB)",
        fontsize=8,
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png", dpi=100)
    return target


class Reconstruction(Attack):
    """``reconstruction`` of the report: one decoder per source, scored against the mean image."""

    name = "reconstruction"
    stage = "reconstruction"
    assumes = ASSUMPTION

    def measure(self, context: AuditContext, report: Mapping[str, Any]) -> dict[str, Any]:
        result = reconstruction_attack(
            context.train,
            context.test,
            sources=context.sources,
            budget=context.budget,
            seed=context.seed,
            device=context.device,
            progress=context.progress,
            width=context.budget.decoder_width,
        )
        plot_reconstructions(result, context.out_dir / "reconstruction.png")
        return {"reconstruction": result.to_dict()}

    def findings(self, report: Mapping[str, Any]) -> list[Finding]:
        recon = report["reconstruction"]
        scores, baseline = recon["scores"], recon["baseline"]
        universal = scores["encoder"]["psnr"]
        out = []
        for task in report["run"]["tasks"]:
            psnr = scores[task]["psnr"]
            gain = psnr - baseline["psnr"]
            text = (
                f"reconstruction from `{task}` features: PSNR {psnr:.2f} dB (universal "
                f"features {universal:.2f} dB, mean-image guess {baseline['psnr']:.2f} dB)"
            )
            if gain <= NO_BETTER_THAN_GUESS_DB:
                out.append(finding("ok", text + "; no better than the mean-image guess."))
            elif psnr >= universal - SAME_PSNR_DB:
                out.append(finding("warning", text + "; as invertible as the universal features."))
            else:
                out.append(finding("note", text + f"; {gain:+.2f} dB over the mean-image guess."))
        return out

    def section(self, doc: Document, report: Mapping[str, Any]) -> None:
        recon = report["reconstruction"]
        doc.heading("Reconstruction attack")
        doc.paragraph(self.assumes)
        rows = [
            [f"`{s}`", f"{v['psnr']:.2f}", f"{v['ssim']:.3f}", f"{v['ms_ssim']:.3f}"]
            for s, v in recon["scores"].items()
        ]
        base = recon["baseline"]
        guess = [f"{base['psnr']:.2f}", f"{base['ssim']:.3f}", f"{base['ms_ssim']:.3f}"]
        rows.append(["mean-image guess", *guess])
        doc.table(["features", "PSNR (dB)", "SSIM", "MS-SSIM"], rows)
        doc.figure("reconstruction.png", "Test images (top) and their reconstructions per source")
