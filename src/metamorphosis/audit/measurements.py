"""The audit's list: every attack and measurement, in the order they run and are reported.

Here rather than in :mod:`.run` because the report (:mod:`.report`) walks the
same list for findings and sections. A new attack is one file in
:mod:`.attacks` and one line here.
"""

from __future__ import annotations

from .attacks.base import Attack
from .attacks.fisher_bound import FisherBound
from .attacks.kept_heads import KeptHeads
from .attacks.leakage import Leakage
from .attacks.reconstruction import Reconstruction
from .cost import ProducerCost
from .tsne import TsneComparison

__all__ = ["default_measurements"]


def default_measurements() -> list[Attack]:
    """Kept heads first: the leakage attack compares its best attacker with them; the
    Fisher bound after the reconstruction attack, whose PSNR it is shown beside."""
    return [
        KeptHeads(),
        Leakage(),
        Reconstruction(),
        FisherBound(),  # beside the decoder's PSNR
        TsneComparison(),
        ProducerCost(),
    ]
