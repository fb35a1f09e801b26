"""Config: YAML → frozen dataclasses, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses

import pytest

from metamorphosis.config import (
    Config,
    LabelSpec,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from metamorphosis.errors import ConfigError

MINIMAL = {"tasks": [{"name": "smile", "column": "Smiling", "kind": "binary"}]}


def test_defaults_fill_a_minimal_config():
    config = config_from_dict(MINIMAL)
    assert config.model.split_index == 5
    assert config.privacy.mode == "both"
    assert config.tasks[0].num_classes == 2
    assert config.data.image_size == (32, 32)


def test_round_trip_through_plain_data():
    config = config_from_dict(
        {**MINIMAL, "private_attributes": [{"name": "gender", "column": "Male"}]}
    )
    assert config_from_dict(config_to_dict(config)) == config


def test_configs_are_frozen():
    config = config_from_dict(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**MINIMAL, "model": {"split_indx": 5}}, "split_indx"),
        ({**MINIMAL, "privacy": {"mode": "maximal"}}, "privacy.mode='maximal'"),
        ({"tasks": [{"name": "x", "kind": "regression"}]}, "x.kind='regression'"),
        ({"tasks": []}, "tasks is empty"),
        ({**MINIMAL, "model": {"norm": "batch"}}, "model.norm='batch'"),
        ({**MINIMAL, "privacy": {"mode": "input", "target_epsilon": None}}, "target_epsilon"),
        ({**MINIMAL, "train": {"batch_size": 0}}, "train.batch_size=0"),
        ({**MINIMAL, "privacy": {"mode": "task"}}, "at least two"),
        ({**MINIMAL, "private_attributes": [{"name": "smile"}]}, "unique"),
        ({**MINIMAL, "data": {"image_size": [64]}}, "data.image_size"),
        ({**MINIMAL, "extra": []}, "extra must be a mapping, got list"),
        ({**MINIMAL, 3: {}}, "unknown section"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        config_from_dict(raw)


def test_overrides_parse_yaml_values_and_list_indices():
    raw = {"tasks": [{"name": "smile", "column": "Smiling"}], "train": {"epochs": 10}}
    apply_overrides(raw, ["train.epochs=2", "tasks.0.column=Male", "privacy.omega=1e-2"])
    config = config_from_dict(raw)
    assert config.train.epochs == 2
    assert config.tasks[0].column == "Male"
    assert config.privacy.omega == pytest.approx(0.01)


@pytest.mark.parametrize("override", ["train", "train.epochs", "tasks.3.name=x", "=3"])
def test_malformed_overrides_are_rejected(override):
    with pytest.raises(ConfigError):
        apply_overrides({"tasks": [{"name": "a"}]}, [override])


def test_load_config_reports_yaml_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        assert isinstance(load_config(path), Config)


def test_mode_none_means_identity_modules():
    config = config_from_dict({**MINIMAL, "privacy": {"mode": "none"}})
    assert config.module_kind == "identity"
    assert config_from_dict(MINIMAL).module_kind == "cross-sec"


def test_label_classes_are_filled_from_data_and_checked():
    config = config_from_dict({"tasks": [{"name": "shape", "kind": "multiclass"}]})
    filled = config.with_label_classes({"shape": 3})
    assert filled.tasks[0].num_outputs == 3
    with pytest.raises(ConfigError, match="num_classes=3 but the data has 4"):
        filled.with_label_classes({"shape": 4})
    with pytest.raises(ConfigError, match="num_classes is unknown"):
        LabelSpec("shape", kind="multiclass").num_outputs  # noqa: B018


def test_same_config_ignores_the_device_and_unread_class_counts():
    from metamorphosis.config import same_config

    raw = {
        "tasks": [{"name": "shape", "kind": "multiclass"}, {"name": "large"}],
        "privacy": {"mode": "none"},
    }
    fresh = config_from_dict(raw)  # from YAML: multiclass num_classes not read yet
    trained = fresh.with_label_classes({"shape": 3})
    assert same_config(fresh, trained) and same_config(trained, fresh)
    moved = config_from_dict({**raw, "train": {"device": "auto"}})
    assert same_config(moved, trained)
    assert not same_config(trained, dataclasses.replace(trained, tasks=trained.tasks[:1]))
    other_lr = config_from_dict({**raw, "train": {"lr": 0.5}})
    assert not same_config(other_lr, fresh)
    four = fresh.with_label_classes({"shape": 4})
    assert not same_config(four, trained)  # both known and different
