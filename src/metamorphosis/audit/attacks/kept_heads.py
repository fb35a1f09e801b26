"""The paper's swap protocol (Tables 4, 6–8): every trained consumer head on every module.

Cell ``[i][j]`` is the primary metric of label ``j``'s trained consumer head
fed module ``i``'s test features; the diagonal is utility. It measures what a
consumer who keeps its head learns from features it was not trained on. A
head trained on other features is easily confused, so a low cell here says
little: the leakage attack (:mod:`.leakage`) retrains attackers instead, and
its findings compare the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...config import LabelSpec
from ..document import Document, number
from ..features import FeatureSet
from ..fitting import predict
from .attacker import SwapResult, score
from .base import Attack, AuditContext

__all__ = ["KeptHeads", "kept_head_swap", "swap_table"]


def kept_head_swap(
    heads: Mapping[str, nn.Module],
    labels: Sequence[LabelSpec],
    test: FeatureSet,
    *,
    device: torch.device | str = "cpu",
) -> SwapResult:
    """The paper's protocol on the test features: every trained head on every module."""
    result = SwapResult.of("kept-heads", labels)
    for source in (spec.name for spec in labels):
        for spec in labels:
            head = heads[spec.name].to(device)
            outputs = predict(head, test.sources[source], device=device)
            result.add(source, spec.name, score(spec, outputs, test.targets[spec.name]))
    return result


def swap_table(doc: Document, result: Mapping[str, Any]) -> None:
    """A swap matrix (``SwapResult.to_dict()``) as a table: rows sources, columns labels."""
    labels = list(result["metric"])
    header = ["features ↓ / label →"] + [f"{c} ({result['metric'][c]['name']})" for c in labels]
    rows = [
        [f"`{source}`"]
        + [number(result["metric"][c]["name"], result["matrix"][source][c]) for c in labels]
        for source in result["matrix"]
    ]
    doc.table(header, rows)


class KeptHeads(Attack):
    """``swap.kept_heads`` of the report."""

    name = "kept_heads"
    stage = "swap (kept heads)"
    assumes = (
        "Kept heads (paper protocol): a consumer of task i feeds task i's features to the head "
        "it trained for task j, without retraining it."
    )

    def measure(self, context: AuditContext, report: Mapping[str, Any]) -> dict[str, Any]:
        kept = kept_head_swap(context.heads, context.labels, context.test, device=context.device)
        return {"swap": {**report.get("swap", {}), "kept_heads": kept.to_dict()}}

    def section(self, doc: Document, report: Mapping[str, Any]) -> None:
        doc.heading("Task-privacy swap matrices")
        doc.paragraph(self.assumes)
        swap_table(doc, report["swap"]["kept_heads"])
