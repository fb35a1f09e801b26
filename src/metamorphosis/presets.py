"""Named defence presets: ``defence.preset: NAME`` fills a set of config keys.

A preset is a table of dotted config keys (as ``--set`` writes them) and values. It is
expanded on the raw config before the sections are built, and a key the config sets
itself wins over the preset's value, so ``--set defence.preset=recommended --set
defence.beta=0.1`` is the preset with another β. The resolved keys are what ``run.json``
records (with the preset's name), so a run dir reads back to the same config.

``recommended`` is the combination the privacy–utility frontier
(``benchmarks/frontier.py``, ``docs/RESULTS.md``) found best across its three datasets:
one narrow variational code per image and public task (16 values, β·KL with β = 0.01)
under ``method: censor`` with λ = 0, read by consumer heads that are small MLPs on the
code (``models/heads.py: code_head``). With one shared map (``privacy.mode: none``)
censor never lets a private attribute's head teach the producer, which the paper's
method does, and its restarted adversaries still train on the released code and log
what they recover (``adversary_<label>`` in ``metrics.jsonl``). Censoring itself
(λ > 0) helped on the demo (λ = 10: background 53 % against 56 %) but stopped CelebA
smile from learning (49 %), so the preset leaves it off. It keeps the config's
``privacy`` section as it is (DP or not), and it needs classification public tasks (a
code of one vector per image cannot serve a dense task) and at least one
classification private attribute.

Measured at the quick CPU budget, no DP (best attacker; 3 seeds where ± is given):
CelebA smile 87.7 ± 0.5 % with gender 58.7 ± 1.0 % (majority 57.6 %) and faces rebuilt
at 11.5 dB (mean-image guess 11.8 dB); StateFarm behaviour 66.6 % with driver 12.8 %
(label floor 10.6 %), where universal features reach 87.4 %; demo colour 87.6 ± 2.4 %,
background 56.7 ± 2.8 % (majority 52.5 %). Where it falls short: under DP-SGD the code
does not learn CelebA smile (50 % at ε = 4, mode input: frontier point
``vib-dp_epsilon_4``), and on StateFarm it trails universal features by 21 points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["PRESETS", "PRESET_METHODS", "expand_preset"]

#: preset name → dotted config key → value
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {
        "method": "censor",
        "censor.weight": 0.0,
        "censor.adversary_lr": 0.01,
        "censor.reset_every": 150,
        "defence.bottleneck_channels": 16,
        "defence.code_size": 1,
        "defence.channel": "vib",
        "defence.beta": 0.01,
    },
}
#: the methods a config may name beside a preset that sets ``method`` (censor is the
#: paper's method plus censoring, so a paper-faithful config takes the preset as it is)
PRESET_METHODS = ("metamorphosis", "censor")


def expand_preset(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with its ``defence.preset`` expanded (a copy; ``raw`` itself is unchanged)."""
    result = {
        key: (dict(value) if isinstance(value, Mapping) else value) for key, value in raw.items()
    }
    defence = result.get("defence")
    name = defence.get("preset") if isinstance(defence, dict) else None
    if name is None:
        return result
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(
            f"defence.preset={name!r} is invalid: expected one of {', '.join(sorted(PRESETS))}"
        )
    for key, value in PRESETS[name].items():
        _fill(result, key, value, name)
    return result


def _fill(raw: dict[str, Any], key: str, value: Any, preset: str) -> None:
    """Set dotted ``key`` to the preset's ``value`` unless the config sets it itself."""
    if key == "method":
        written = raw.get("method")
        if written is not None and written not in PRESET_METHODS:
            raise ConfigError(
                f"defence.preset={preset!r} trains with method {value!r}, but the config sets "
                f"method={written!r}: drop the preset or set method to one of "
                f"{', '.join(PRESET_METHODS)}"
            )
        raw["method"] = value
        return
    section, option = key.split(".")
    node = raw.get(section)
    if node is None:
        node = raw[section] = {}
    if not isinstance(node, dict):
        raise ConfigError(f"{section} must be a mapping, got {type(node).__name__}")
    node.setdefault(option, value)
