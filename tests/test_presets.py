"""``defence.preset``: a named combination fills the config keys the config leaves unset."""

from __future__ import annotations

import dataclasses

import pytest

from metamorphosis.config import config_from_dict, config_to_dict, load_config
from metamorphosis.errors import ConfigError
from metamorphosis.presets import PRESETS
from tiny import tiny_config_dict

RECOMMENDED = PRESETS["recommended"]


def _raw(mode: str = "none", **defence) -> dict:
    raw = tiny_config_dict(mode, epochs=1)
    raw["defence"] = {"preset": "recommended", **defence}
    return raw


def test_the_recommended_preset_fills_the_method_and_every_key_it_names():
    config = config_from_dict(_raw())
    assert config.method == RECOMMENDED["method"]
    for key, value in RECOMMENDED.items():
        if key == "method":
            continue
        section, option = key.split(".")
        if section == "defence":
            assert getattr(config.defence, option) == value, key
        else:
            assert config.options_section(section)[option] == value, key
    assert config.defence.preset == "recommended"


def test_a_key_the_config_sets_wins_over_the_preset():
    config = config_from_dict(_raw(beta=0.5))
    assert config.defence.beta == 0.5
    assert config.defence.code_size == RECOMMENDED["defence.code_size"]


def test_the_privacy_section_is_the_configs_own_with_and_without_dp():
    assert config_from_dict(_raw("none")).privacy.mode == "none"
    dp = config_from_dict(_raw("input"))
    assert dp.privacy.mode == "input" and dp.privacy.uses_dp


def test_a_resolved_config_reads_back_to_itself():
    """run.json records the resolved keys with the preset's name: reading it is a no-op."""
    config = config_from_dict(_raw(beta=0.5))
    again = config_from_dict(config_to_dict(config))
    assert dataclasses.asdict(again) == dataclasses.asdict(config)


def test_an_unknown_preset_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"defence.preset='best'.*recommended"):
        config_from_dict({**_raw(), "defence": {"preset": "best"}})


def test_a_preset_refuses_a_method_it_would_replace():
    raw = {**_raw(), "method": "deepobfuscator"}
    with pytest.raises(ConfigError, match="method='deepobfuscator'"):
        config_from_dict(raw)


def test_a_paper_faithful_config_takes_the_preset():
    assert config_from_dict({**_raw("both"), "method": "metamorphosis"}).method == "censor"


def test_a_dense_public_task_is_refused_with_the_key_to_unset():
    raw = _raw()
    raw["tasks"] = [{"name": "seg", "column": "seg", "kind": "segmentation", "num_classes": 4}]
    with pytest.raises(ConfigError, match=r"\['seg'\] are dense.*defence.code_size"):
        config_from_dict(raw)


def test_the_shipped_defended_config_uses_the_preset():
    config = load_config("configs/celeba_smile_gender_defended.yaml")
    assert config.defence.preset == "recommended" and config.method == "censor"


def test_the_demo_releases_through_the_preset():
    from metamorphosis.experiment import demo_config

    config = demo_config()
    assert config.defence.preset == "recommended" and config.method == "censor"
    assert config.defence.code_size == RECOMMENDED["defence.code_size"]
