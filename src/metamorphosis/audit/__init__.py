"""The privacy audit of a trained producer (``metamorphosis audit RUN_DIR``).

:func:`run_audit` reads a run dir, runs every attack on one declared budget
and writes ``RUN_DIR/audit/`` (report.md, report.json, report.html, figures):

* :mod:`.attacks` — one file per attack: the kept-head swap (paper protocol), leakage
  (the retrained consumer head, an MLP, a linear probe and k-NN on every released source
  and label; the best attacker is the headline) and reconstruction;
* :mod:`.attribute` — the reference points: majority rate and label floor;
* :mod:`.tsne` — t-SNE and pairwise similarity of the modules' features;
* :mod:`.cost` — sizes and latency of encoder, modules and heads;
* :mod:`.sweeps` — utility and leakage vs ε and vs split index (retraining);
* :mod:`.measurements` — the list :func:`run_audit` runs, in report order;
* :mod:`.report` — findings and the written report.
"""

from __future__ import annotations

from .budget import BUDGETS, AttackBudget
from .run import run_audit

__all__ = ["AttackBudget", "BUDGETS", "run_audit"]
