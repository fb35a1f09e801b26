"""The privacy audit of a trained producer (``metamorphosis audit RUN_DIR``).

:func:`run_audit` reads a run dir, runs every attack on one declared budget
and writes ``RUN_DIR/audit/`` (report.md, report.json, report.html, figures):

* :mod:`.swap` — swap matrices, kept heads (paper protocol) and retrained attackers;
* :mod:`.attribute` — private-attribute inference (head attacker, linear probe);
* :mod:`.reconstruction` — a decoder trained to rebuild images from features;
* :mod:`.tsne` — t-SNE and pairwise similarity of the modules' features;
* :mod:`.cost` — sizes and latency of encoder, modules and heads;
* :mod:`.sweeps` — utility and leakage vs ε and vs split index (retraining);
* :mod:`.report` — findings, figures and the written report.
"""

from __future__ import annotations

from .budget import BUDGETS, AttackBudget
from .run import run_audit

__all__ = ["AttackBudget", "BUDGETS", "run_audit"]
