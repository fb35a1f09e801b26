"""What every step of the audit is: an :class:`Attack` run on one :class:`AuditContext`.

An attack (or a measurement reported the same way, such as t-SNE or the
producer's cost) owns everything about itself: what it assumes about the
attacker, how it measures, the findings it flags, its section of the report
and its figure. :mod:`metamorphosis.audit.run` only runs the list
(:func:`metamorphosis.audit.measurements.default_measurements`) and the
report only asks each attack for its findings and its section.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...config import LabelSpec
from ..budget import AttackBudget
from ..document import Document
from ..features import ENCODER_SOURCE, FeatureSet

__all__ = ["Attack", "AuditContext", "Finding", "HeadFactory", "finding"]

HeadFactory = Callable[[LabelSpec], nn.Module]
"""Builds a fresh, untrained consumer head for a label (the consumer architecture)."""

Finding = dict[str, str]
"""``{"level": "warning" | "note" | "ok", "text": ...}``, as the report lists them."""


def finding(level: str, text: str) -> Finding:
    """One flagged statement of the report."""
    assert level in ("warning", "note", "ok"), level
    return {"level": level, "text": text}


@dataclass(frozen=True)
class AuditContext:
    """Everything an attack may read: the run's features, labels and weights, and the budget.

    Attributes:
        run_dir: the audited run dir (weights are read from it where needed).
        out_dir: where attacks write their figures (``RUN_DIR/audit``).
        train: the attacker's training items (features of every source, labels, images).
        test: the held-out items every attack is scored on.
        labels: every label, public tasks first, then private attributes.
        tasks: the public tasks' names (whose features are released).
        private: the private attributes.
        make_head: a fresh consumer-architecture head for a label.
        heads: the consumer heads trained with the producer (the kept heads).
        budget: the declared attack budget.
        device: where attackers train.
        seed: the audit's seed; every attack derives its own seeds from it.
        progress: show progress bars.
    """

    run_dir: Path
    out_dir: Path
    train: FeatureSet
    test: FeatureSet
    labels: tuple[LabelSpec, ...]
    tasks: tuple[str, ...]
    private: tuple[LabelSpec, ...]
    make_head: HeadFactory
    heads: Mapping[str, nn.Module]
    budget: AttackBudget
    device: torch.device
    seed: int
    progress: bool = False

    @property
    def sources(self) -> list[str]:
        """What an attacker can hold: the encoder output (the universal baseline) and every
        public task's released features. Private modules' features are never released."""
        return [ENCODER_SOURCE, *self.tasks]


class Attack(ABC):
    """One step of the audit.

    Attributes:
        name: the key of its assumption in the report's ``assumptions``.
        stage: what the audit logs while it runs.
        assumes: what the attacker is assumed to hold and do, in words for the report
            (for a measurement that is no attack: what it shows and what it does not).
    """

    name: ClassVar[str]
    stage: ClassVar[str]
    assumes: ClassVar[str]

    @abstractmethod
    def measure(self, context: AuditContext, report: Mapping[str, Any]) -> dict[str, Any]:
        """Run the attack, write its figure into ``context.out_dir`` and return its
        report entries (JSON-safe). ``report`` holds the entries of the attacks that ran
        before it, for an attack that compares itself with them."""

    def findings(self, report: Mapping[str, Any]) -> list[Finding]:
        """The flagged statements this attack's entries of ``report`` call for."""
        return []

    @abstractmethod
    def section(self, doc: Document, report: Mapping[str, Any]) -> None:
        """Add this attack's section (text, tables, figure) to the report document."""

    def assumptions(self) -> dict[str, str]:
        """This attack's entries of the report's ``assumptions``."""
        return {self.name: self.assumes}
