"""Adding a task to a finished run: only the new module trains, existing features stay put."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import create_accountant
from safetensors.torch import load_file

from metamorphosis import load_producer
from metamorphosis.config import LabelSpec, config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError
from metamorphosis.experiment import add_task, train_run
from metamorphosis.losses.ssim import ssim_per_sample
from tiny import tiny_config_dict

LARGE = LabelSpec(name="large", column="large", kind="binary")
EXISTING = ("shape", "background")


def _run_without_large(mode: str) -> dict:
    raw = tiny_config_dict(mode)
    raw["tasks"] = raw["tasks"][:1]  # 'shape' public, 'background' private
    return raw


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """A DP run (mode both) of 'shape' with 'background' private."""
    out = tmp_path_factory.mktemp("add") / "base"
    train_run(config_from_dict(_run_without_large("both")), out, progress=False)
    return out


def _test_images(raw: dict) -> torch.Tensor:
    config = config_from_dict(raw)
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    return torch.stack([data.test[i][0] for i in range(len(data.test))])


def test_existing_features_and_heads_stay_bit_identical(dp_run, tmp_path):
    images = _test_images(_run_without_large("both"))
    with torch.no_grad():
        before = load_producer(dp_run)(images, names=EXISTING)
    record = add_task(dp_run, LARGE, epochs=1, out=tmp_path / "added", progress=False)
    assert record["tasks"] == ["shape", "large"]
    producer = load_producer(tmp_path / "added")
    with torch.no_grad():
        after = producer(images, names=[*EXISTING, "large"])
    for name in EXISTING:
        assert torch.equal(after[name], before[name]), name
    old_heads = load_file(dp_run / "heads.safetensors")
    new_heads = load_file(tmp_path / "added" / "heads.safetensors")
    for key, value in old_heads.items():
        assert torch.equal(new_heads[key], value), key
    assert {k.split(".")[0] for k in new_heads} == {"shape", "background", "large"}
    assert not torch.equal(after["large"], after["shape"])


def test_epsilon_composes_the_run_and_the_new_phase(dp_run, tmp_path):
    import json

    base = json.loads((dp_run / "run.json").read_text())
    record = add_task(dp_run, LARGE, epochs=1, out=tmp_path / "added", progress=False)
    phases = record["privacy"]["phases"]
    assert [p["name"] for p in phases] == ["encoder", "modules", "add-large"]
    assert phases[:2] == base["privacy"]["phases"]
    assert phases[2]["noise_multiplier"] == base["privacy"]["noise_multiplier"]
    accountant = create_accountant("rdp")
    accountant.history = [(p["noise_multiplier"], p["sample_rate"], p["steps"]) for p in phases]
    epsilon = accountant.get_epsilon(delta=record["privacy"]["delta"])
    assert record["privacy"]["epsilon"] == pytest.approx(epsilon)
    assert record["privacy"]["epsilon"] > base["privacy"]["epsilon"]
    added = record["added_tasks"]
    assert len(added) == 1 and added[0]["task"] == "large" and added[0]["seconds"] > 0
    assert added[0]["epsilon_before"] == base["privacy"]["epsilon"]
    assert record["train_seconds"] > base["train_seconds"]


def _mean_ssim_to(features: dict[str, torch.Tensor], new: str) -> dict[str, float]:
    return {
        name: float(ssim_per_sample(features[new], value).mean())
        for name, value in features.items()
        if name != new
    }


def test_the_ssim_term_makes_the_new_features_distinct(tmp_path):
    """The new module's mean SSIM to the other modules, and to the most similar one, is
    below what it is without the term (test split; mode ``task``, no DP noise).

    A pair already near 0 (here 'shape') has nothing left to lose and may move by
    ±0.01 either way, so single pairs are not compared. On a tiny run Adam
    amplifies float noise (results differ with the thread count), so the
    term is weighted strongly enough to dominate it.
    """
    raw = _run_without_large("task")
    train_run(config_from_dict(raw), tmp_path / "base", progress=False)
    images = _test_images(raw)
    similarity = {}
    for omega in (10.0, 0.0):
        out = tmp_path / f"omega_{omega}"
        add_task(tmp_path / "base", LARGE, epochs=4, omega=omega, out=out, progress=False)
        with torch.no_grad():
            features = load_producer(out)(images, names=[*EXISTING, "large"])
        similarity[omega] = _mean_ssim_to(features, "large")
    mean = {omega: sum(values.values()) / len(values) for omega, values in similarity.items()}
    assert mean[10.0] < mean[0.0] - 0.02, similarity
    assert max(similarity[10.0].values()) < max(similarity[0.0].values()) - 0.05, similarity


def test_a_run_is_extended_in_place_and_a_second_add_is_refused(dp_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dp_run, run)
    add_task(run, LARGE, epochs=1, progress=False)
    assert load_producer(run).tasks == ["shape", "large"]
    with pytest.raises(ConfigError, match="already exists"):
        add_task(run, LARGE, epochs=1, progress=False)
    assert not (run / "checkpoint.pt").exists()


def test_runs_without_task_modules_are_refused(tmp_path):
    raw = _run_without_large("none")
    train_run(config_from_dict(raw), tmp_path / "universal", progress=False)
    with pytest.raises(ConfigError, match="needs a MetaMorphosis run with task modules"):
        add_task(tmp_path / "universal", LARGE, progress=False)
