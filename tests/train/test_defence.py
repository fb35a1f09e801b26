"""Training with a defence: bottleneck, linear erasure, keyed release noise, end to end."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression

from metamorphosis.audit.features import extract_features
from metamorphosis.config import LabelSpec, config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError, RunDirError
from metamorphosis.experiment import add_task, train_run
from metamorphosis.models.release import kl_scale
from metamorphosis.rundir import RELEASE_KEY_FILE, load_producer
from metamorphosis.serve.app import create_app
from metamorphosis.serve.codec import decode_tensors
from metamorphosis.serve.server import build_service, key_store
from metamorphosis.train.loop import Trainer
from tiny import tiny_config_dict

DEFENCE = {"bottleneck_channels": 2, "beta": 0.01, "noise": 0.3, "erase": "linear"}


def _config(mode: str = "both", **defence):
    raw = tiny_config_dict(mode, epochs=1)
    raw["defence"] = defence or DEFENCE
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def defended_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("defence") / "run"
    record = train_run(_config(), out, progress=False)
    return out, record


def test_run_json_records_the_defence_and_each_release_but_never_the_secret(defended_run):
    out, record = defended_run
    assert record["defence"] == {**_config().defence.__dict__}
    for task in ("shape", "large"):
        entry = dict(record["release"][task])
        dfil = entry.pop("dfil")  # a noisy release: its bound on the calibration images
        assert entry == {
            "sigma": 0.3,
            "bottleneck_channels": 2,
            "code_size": None,
            "channel": "vib",
            "erased": ["background"],
        }
        assert dfil["sigma"] == 0.3 and dfil["split"] == "train" and dfil["p95"] > 0
    key_path = out / RELEASE_KEY_FILE
    secret = key_path.read_text().strip()
    assert len(bytes.fromhex(secret)) == 32
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert secret not in (out / "run.json").read_text()


def test_the_log_has_the_kl_term_and_the_erase_step(defended_run):
    out, _ = defended_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert all(r["train"]["kl_term"] > 0 for r in epochs)
    erase = [r for r in records if r.get("event") == "erase"]
    assert len(erase) == 1 and erase[0]["erased"] == {
        "shape": ["background"],
        "large": ["background"],
    }


def test_each_release_stage_trains_with_its_module(tmp_path):
    config = _config()
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    config = config.with_label_classes(data.num_classes)
    trainer = Trainer(config, data, tmp_path, progress=False)
    before = {k: v.clone() for k, v in trainer.producer.releases.state_dict().items()}
    trainer.fit()
    after = trainer.producer.releases.state_dict()
    for label in ("shape", "large", "background"):  # public and private bottlenecks
        for part in ("bottleneck.mean.weight", "bottleneck.log_var.weight", "expand.weight"):
            key = f"{label}.{part}"
            assert not torch.equal(before[key], after[key]), key


def test_released_features_are_fixed_per_image_and_noisy(defended_run):
    out, _ = defended_run
    producer = load_producer(out)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        first = producer(images)
        again = load_producer(out)(images)
        clean = {task: producer.features(images, task, noise=False) for task in producer.tasks}
    for task in producer.tasks:
        torch.testing.assert_close(first[task], again[task], rtol=0, atol=0)
        assert float((first[task] - clean[task]).abs().mean()) > 1e-3


def test_no_linear_probe_beats_the_majority_on_the_erased_training_features(defended_run):
    out, _ = defended_run
    config = _config()
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    producer = load_producer(out)
    items = [data.train[i] for i in range(len(data.train))]
    images = torch.stack([image for image, _ in items])
    labels = torch.stack([torch.as_tensor(t["background"]) for _, t in items]).numpy()
    majority = max(labels.mean(), 1 - labels.mean())
    with torch.no_grad():
        for task in producer.tasks:
            erased = producer.features(images, task, noise=False).flatten(1).numpy()
            probe = LogisticRegression(max_iter=2000).fit(erased, labels)
            assert probe.score(erased, labels) <= majority + 0.01, task
            eraser = producer.release_of(task).eraser
            eraser.fitted.fill_(False)  # the same code, not erased: the probe can tell
            kept = producer.features(images, task, noise=False).flatten(1).numpy()
            probe = LogisticRegression(max_iter=2000).fit(kept, labels)
            assert probe.score(kept, labels) > majority + 0.05, task


def test_the_service_releases_exactly_what_load_producer_gives(defended_run):
    out, _ = defended_run
    service = build_service(out)
    secret = key_store(out).issue("shape").secret
    client = TestClient(create_app(service))
    headers = {"Authorization": f"Bearer {secret}"}
    ids = client.get("/v1/tasks/shape/items", headers=headers).json()["ids"][:5]
    response = client.get(
        "/v1/tasks/shape/features", params={"ids": ",".join(ids)}, headers=headers
    )
    served, _ = decode_tensors(response.content)
    with torch.no_grad():
        expected = load_producer(out).features(service.source.images(ids), task="shape")
    torch.testing.assert_close(served["features"], expected, rtol=0, atol=0)


def test_the_audit_attacks_the_released_features_not_the_module_output(defended_run):
    out, record = defended_run
    config = config_from_dict(record["config"])
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    producer = load_producer(out)
    features = extract_features(producer, data.test, names=["shape", "background"], mean=0, std=1)
    images = torch.stack([data.test[i][0] for i in range(len(data.test))])
    with torch.no_grad():
        released = producer.features(images, task="shape")  # erased, keyed noise on
        module = producer.task_modules["shape"](producer.encode(images))
    torch.testing.assert_close(features.sources["shape"], released)
    assert not torch.allclose(features.sources["shape"], module)


def test_a_run_without_its_release_key_cannot_release(defended_run, tmp_path):
    out, _ = defended_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / RELEASE_KEY_FILE).unlink()
    with pytest.raises(RunDirError, match="release.key is missing"):
        load_producer(copy)


def test_a_short_or_damaged_release_key_is_refused(defended_run, tmp_path):
    out, _ = defended_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / RELEASE_KEY_FILE).write_text("00ff\n")
    with pytest.raises(RunDirError, match="holds a 2-byte key"):
        load_producer(copy)
    (copy / RELEASE_KEY_FILE).write_text("not hex\n")
    with pytest.raises(RunDirError, match="cannot read"):
        load_producer(copy)


def test_add_task_refuses_a_defended_run(defended_run):
    out, _ = defended_run
    with pytest.raises(ConfigError, match="add-task on a run with a defence"):
        add_task(out, LabelSpec("count", "count", "multiclass"), progress=False)


def test_noise_alone_trains_without_a_bottleneck_or_eraser(tmp_path):
    record = train_run(_config("input", noise=0.5), tmp_path / "run", progress=False)
    entry = dict(record["release"]["shape"])
    assert entry.pop("dfil")["sigma"] == 0.5  # fixed noise: a finite bound
    assert entry == {
        "sigma": 0.5,
        "bottleneck_channels": None,
        "code_size": None,
        "channel": None,
        "erased": [],
    }
    assert record["privacy"]["epsilon"] is not None  # the noise layer trains under DP


def test_an_undefended_run_records_a_noiseless_release_and_no_key(tmp_path):
    raw = tiny_config_dict("none", epochs=1)
    record = train_run(config_from_dict(raw), tmp_path / "run", progress=False)
    assert record["release"]["large"] == {
        "sigma": 0.0,
        "bottleneck_channels": None,
        "code_size": None,
        "channel": None,
        "erased": [],
        "dfil": None,  # no noise: no bound
    }
    assert record["release_total"] is None
    assert not (tmp_path / "run" / RELEASE_KEY_FILE).exists()


def test_kl_warmup_ramps_linearly_then_holds():
    assert [kl_scale(0, e) for e in range(3)] == [1.0, 1.0, 1.0]
    assert [kl_scale(4, e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_the_trainer_warms_the_kl_up_epoch_by_epoch(tmp_path):
    raw = tiny_config_dict("none", epochs=3)
    raw["defence"] = {"bottleneck_channels": 2, "beta": 0.01, "beta_warmup": 2}
    train_run(config_from_dict(raw), tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    kl = [r["train"]["kl_term"] for r in map(json.loads, lines) if r.get("event") == "epoch"]
    assert kl[0] == 0.0 and kl[1] > 0 and kl[2] > 0, kl
