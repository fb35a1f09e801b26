"""The audit's attacks, one file each, and the attackers the leakage attack runs.

* :mod:`.base` — :class:`Attack` (assumption, ``measure``, findings, report section,
  figure) and the :class:`AuditContext` every attack reads;
* :mod:`.kept_heads` — the paper's swap protocol (trained heads on other modules);
* :mod:`.leakage` — every attacker on every (released source, other label); the best
  attacker is the headline;
* attackers, registered in :data:`ATTACKERS`: :mod:`.retrained_head` (consumer
  architecture), :mod:`.mlp` (pooled features), :mod:`.linear_probe`, :mod:`.knn`;
  :mod:`.attacker` holds what they share (cells, restarts, early stopping);
* :mod:`.reconstruction` — a decoder trained to rebuild images from features.
"""

from __future__ import annotations

from . import knn, linear_probe, mlp, retrained_head  # noqa: F401  (they register themselves)
from .attacker import ATTACKERS, Attacker, TrainedAttacker
from .base import Attack, AuditContext

__all__ = ["ATTACKERS", "Attack", "Attacker", "AuditContext", "TrainedAttacker"]
