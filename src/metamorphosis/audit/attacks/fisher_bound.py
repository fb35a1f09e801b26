"""``dfil`` of the report: the Cramér–Rao bound on rebuilding an image from one release.

Not an attack: a bound on *every unbiased* attacker, from the release's Jacobian and
noise (:mod:`metamorphosis.privacy.fisher`). It is reported beside the empirical
decoder's PSNR and never in its place: the decoder is biased (it learns a prior over
images from the attacker's training items) and may beat the cap.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from ...data.transforms import ImageTransform
from ...privacy.fisher import (
    Sensitivity,
    has_bound,
    measure_sensitivity,
    producer_release,
    release_sigmas,
    total_stats,
)
from ...rundir import load_producer, read_run_json
from ..document import Document
from .base import Attack, AuditContext, Finding, finding

__all__ = ["FisherBound", "IMAGES", "PROBES"]

IMAGES = 128  # test images whose dFIL is estimated
PROBES = 8  # Hutchinson probes per image

ASSUMPTION = (
    "A bound, not an attack: for released features z = mean(x) + noise, any *unbiased* "
    "reconstruction of the pixels x in [0, 1] has expected per-pixel MSE >= 1/dFIL(x) "
    "(Cramér–Rao), so the PSNR of its expected error is at most 10·log10 dFIL(x). dFIL is "
    "estimated with Hutchinson's estimator on forward-mode Jacobian-vector products "
    f"({PROBES} Rademacher probes per image, standard error over probes) on up to {IMAGES} "
    "test images, with each task's release noise (learnt posterior variance plus sigma). "
    "It covers one release of an image per task; colluding consumers of several tasks add "
    "their dFIL (the total below). Attackers with a prior over images are biased and can "
    "exceed the cap: the decoder's PSNR is their measure. A release without noise has no "
    "bound."
)


class FisherBound(Attack):
    """dFIL mean / median / 95th percentile per public task, its PSNR cap and the total."""

    name = "dfil"
    stage = "fisher information"
    assumes = ASSUMPTION

    def measure(self, context: AuditContext, report: Mapping[str, Any]) -> dict[str, Any]:
        producer = load_producer(context.run_dir)
        transform = ImageTransform.from_dict(read_run_json(context.run_dir)["transform"])
        pixels = context.test.images[:IMAGES]
        sigmas = release_sigmas(producer, context.tasks)
        sensitivities: dict[str, Sensitivity] = {}
        entries: dict[str, dict[str, Any] | None] = {}
        started = time.perf_counter()
        for task in context.tasks:
            if not has_bound(producer, task):
                entries[task] = None
                continue
            release = producer_release(producer, task, mean=transform.mean, std=transform.std)
            sensitivities[task] = measure_sensitivity(
                release, pixels, probes=PROBES, seed=context.seed
            )
            entries[task] = sensitivities[task].stats(sigmas[task]).to_dict()
        seconds = time.perf_counter() - started
        measured = [t for t in context.tasks if entries[t] is not None]
        result: dict[str, Any] = {"dfil": entries}
        result["dfil_cost"] = {
            "seconds": round(seconds, 3),
            "seconds_per_image_and_task": seconds / max(1, len(pixels) * len(measured)),
            "threads": torch.get_num_threads(),
        }
        if measured and len(measured) == len(context.tasks):
            result["dfil_total"] = total_stats(sensitivities, sigmas)
        return result

    def findings(self, report: Mapping[str, Any]) -> list[Finding]:
        out: list[Finding] = []
        scores = report.get("reconstruction", {}).get("scores", {})
        for task, entry in report.get("dfil", {}).items():  # reports before v3 have none
            if entry is None:
                out.append(
                    finding(
                        "note",
                        f"`{task}` is released without noise: no Fisher-information bound "
                        "on reconstructing its inputs.",
                    )
                )
                continue
            decoder = scores.get(task, {}).get("psnr")
            text = (
                f"`{task}`: dFIL p95 {entry['p95']:.3g}, so no unbiased attacker's expected "
                f"error beats PSNR {entry['psnr_cap']:.1f} dB on 95 % of images"
            )
            if decoder is not None:
                text += f" (the audit's decoder, which uses an image prior: {decoder:.1f} dB)"
            out.append(finding("note", text + "."))
        return out

    def section(self, doc: Document, report: Mapping[str, Any]) -> None:
        if "dfil" not in report:  # a report written before the bound existed
            return
        doc.heading("Fisher-information bound on reconstruction")
        doc.paragraph(self.assumes)
        scores = report.get("reconstruction", {}).get("scores", {})
        rows = []
        for task, entry in report["dfil"].items():
            decoder = scores.get(task, {}).get("psnr")
            shown = "—" if decoder is None else f"{decoder:.2f}"
            if entry is None:
                rows.append([f"`{task}`", "0", "—", "—", "—", "no bound", shown])
                continue
            rows.append(
                [
                    f"`{task}`",
                    f"{entry['sigma']:.3g}",
                    f"{entry['mean']:.3g} ± {entry['stderr']:.2g}",
                    f"{entry['median']:.3g}",
                    f"{entry['p95']:.3g}",
                    f"{entry['psnr_cap']:.2f}",
                    shown,
                ]
            )
        total = report.get("dfil_total")
        if total is not None:
            rows.append(
                [
                    "all tasks (colluding)",
                    "",
                    f"{total['mean']:.3g}",
                    f"{total['median']:.3g}",
                    f"{total['p95']:.3g}",
                    f"{total['psnr_cap']:.2f}",
                    "",
                ]
            )
        doc.table(
            [
                "release",
                "sigma",
                "dFIL mean",
                "median",
                "p95",
                "PSNR cap (dB, p95)",
                "decoder PSNR (dB)",
            ],
            rows,
        )
        cost = report["dfil_cost"]
        doc.paragraph(
            f"Estimated in {cost['seconds']:.1f} s: "
            f"{1000 * cost['seconds_per_image_and_task']:.1f} ms per image and task "
            f"({cost['threads']} threads)."
        )
