"""Algorithm 2 end to end on a tiny model: phases, ε, run dir, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from opacus.accountants import create_accountant
from safetensors.torch import load_file

from metamorphosis import load_heads, load_producer
from metamorphosis.experiment import train_run
from metamorphosis.train import checkpoint as checkpoint_module
from metamorphosis.train.loop import plan_phases


def test_phases_follow_algorithm_2(tiny_config):
    both = plan_phases(tiny_config("both"))
    assert [p.name for p in both] == ["encoder", "modules"]
    assert both[0].labels == ("background",) and both[0].dp and both[0].train_encoder
    assert both[1].labels == ("shape", "large", "background")
    assert both[1].dp and not both[1].train_encoder and both[1].omega == pytest.approx(0.1)
    (task,) = plan_phases(tiny_config("task"))
    assert not task.dp and task.omega > 0
    (inp,) = plan_phases(tiny_config("input"))
    assert inp.dp and inp.omega == 0
    (none,) = plan_phases(tiny_config("none"))
    assert not none.dp and none.omega == 0


@pytest.mark.parametrize("mode", ["none", "task", "input", "both"])
def test_every_mode_writes_a_valid_run_dir(tmp_path, tiny_config, mode):
    out = tmp_path / mode
    record = train_run(tiny_config(mode), out, progress=False)
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk == record
    for key in (
        "version",
        "config",
        "tasks",
        "private_attributes",
        "input_shape",
        "feature_shapes",
        "privacy",
        "metrics",
    ):
        assert key in on_disk
    assert on_disk["tasks"] == ["shape", "large"]
    assert on_disk["private_attributes"] == ["background"]
    assert on_disk["feature_shapes"]["shape"] == [8, 4, 4]
    assert set(on_disk["metrics"]) == {"shape", "large", "background"}
    assert 0.0 <= on_disk["metrics"]["shape"]["accuracy"] <= 1.0
    assert (out / "producer.safetensors").is_file() and (out / "heads.safetensors").is_file()
    assert not (out / "checkpoint.pt").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(x["event"] == "epoch" for x in lines)
    privacy = on_disk["privacy"]
    if mode in ("none", "task"):
        assert privacy["epsilon"] is None and privacy["phases"] == []
    else:
        assert privacy["epsilon"] > 0 and privacy["noise_multiplier"] == 1.0
    if mode == "none":  # universal features: every module is the identity
        assert not any(
            k.startswith("task_modules") for k in load_file(out / "producer.safetensors")
        )


def test_epsilon_in_run_json_is_reproducible_with_opacus(tmp_path, tiny_config):
    config = tiny_config("both", privacy={"noise_multiplier": None, "target_epsilon": 6.0})
    record = train_run(config, tmp_path / "run", progress=False)
    privacy = record["privacy"]
    assert [p["name"] for p in privacy["phases"]] == ["encoder", "modules"]
    accountant = create_accountant(privacy["accountant"])
    accountant.history = [
        (p["noise_multiplier"], p["sample_rate"], p["steps"]) for p in privacy["phases"]
    ]
    assert accountant.get_epsilon(privacy["delta"]) == pytest.approx(privacy["epsilon"], rel=1e-6)
    assert privacy["steps"] == sum(p["steps"] for p in privacy["phases"])
    assert privacy["epsilon"] <= 6.0 + 0.06  # the calibrated noise meets the target


def test_load_producer_follows_the_python_api_contract(tmp_path, tiny_config):
    out = tmp_path / "run"
    record = train_run(tiny_config("both"), out, progress=False)
    producer = load_producer(out)
    assert not producer.training
    assert producer.tasks == ["shape", "large"]
    assert producer.private_attributes == ["background"]
    assert producer.input_shape == (3, 16, 16)
    from PIL import Image

    image = producer.preprocess(Image.new("RGB", (40, 30), (200, 10, 10)))
    assert image.shape == (3, 16, 16)
    images = torch.stack([image, -image])
    feats = producer(images)
    assert set(feats) == {"shape", "large"}  # private features are never published
    assert list(feats["shape"].shape) == [2, *record["feature_shapes"]["shape"]]
    assert producer.encode(images).shape == (2, 8, 4, 4)
    torch.testing.assert_close(producer.features(images, task="large"), feats["large"])
    heads = load_heads(out)
    assert set(heads) == {"shape", "large", "background"}


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
    config = tiny_config("both", epochs=2, encoder_epochs=2)
    reference = train_run(config, tmp_path / "straight", progress=False)

    real_save = checkpoint_module.save_checkpoint
    saves = {"n": 0}

    def save_then_die(path, state):
        real_save(path, state)
        saves["n"] += 1
        if saves["n"] == 3:  # killed after phase 'encoder' and one epoch of 'modules'
            raise _Interrupt

    import metamorphosis.train.loop as loop

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupt):
        train_run(config, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    resumed = train_run(config, tmp_path / "resumed", progress=False)

    events = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    resume = [e for e in events if e["event"] == "resume"]
    assert resume == [{"event": "resume", "phase": "modules", "epoch": 1}]
    assert resumed["privacy"] == reference["privacy"]
    assert resumed["metrics"] == reference["metrics"]
    straight = load_file(tmp_path / "straight" / "producer.safetensors")
    again = load_file(tmp_path / "resumed" / "producer.safetensors")
    for key, value in straight.items():
        torch.testing.assert_close(again[key], value, msg=key)


def test_checkpoint_from_another_config_is_refused(tmp_path, tiny_config, monkeypatch):
    import metamorphosis.train.loop as loop
    from metamorphosis.errors import CheckpointError

    real_save = checkpoint_module.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise _Interrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupt):
        train_run(tiny_config("both"), tmp_path / "run", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    with pytest.raises(CheckpointError, match="another config"):
        train_run(tiny_config("both", lr=5e-3), tmp_path / "run", progress=False)


@pytest.mark.realdata
def test_celeba_config_trains_on_a_few_hundred_real_images(tmp_path, real_data_root):
    from metamorphosis.config import load_config

    root = real_data_root("celeba")
    config = load_config(
        "configs/celeba_smile_gender.yaml",
        [
            f"data.root={root}",
            "data.max_train=256",
            "data.max_eval=128",
            "train.epochs=1",
            "privacy.target_epsilon=null",
            "privacy.noise_multiplier=1.0",
            "privacy.accountant=rdp",
        ],
    )
    record = train_run(config, tmp_path / "celeba", progress=False)
    assert record["input_shape"] == [3, 64, 64]
    assert record["feature_shapes"]["smile"] == [64, 16, 16]  # split 5 at 64×64
    assert [p["name"] for p in record["privacy"]["phases"]] == ["encoder", "modules"]
    assert record["privacy"]["epsilon"] > 0
    for name in ("smile", "gender"):
        assert 0.0 <= record["metrics"][name]["accuracy"] <= 1.0


def test_pretrained_encoder_weights_are_loaded_from_a_local_file(tmp_path, tiny_config):
    from metamorphosis.data import build_datasets
    from metamorphosis.models.encoders import ResNet
    from metamorphosis.train.loop import Trainer

    torch.manual_seed(11)
    reference = ResNet(width=8, blocks=(1, 1, 1, 1), norm="group")
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    config = tiny_config("none")
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, pretrained=str(tmp_path / "weights.pt"))
    )
    data = build_datasets(config.data, config.all_labels, seed=0)
    trainer = Trainer(config.with_label_classes(data.num_classes), data, tmp_path / "run")
    loaded = trainer.producer.encoder.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, reference.state_dict()[key], msg=key)
