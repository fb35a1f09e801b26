"""``release:`` targets: the trainer calibrates each task's release noise to a dFIL bound."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from metamorphosis.config import config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError
from metamorphosis.experiment import train_run
from metamorphosis.privacy.fisher import (
    QUANTILE,
    measure_sensitivity,
    producer_release,
    total_dfil,
)
from metamorphosis.rundir import load_producer
from metamorphosis.train.calibration import calibration_pixels
from metamorphosis.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from metamorphosis.train.loop import Trainer
from tiny import tiny_config_dict

TARGET_CAP = 10.0  # dB: dFIL 10 per task
RELEASE = {"target_psnr_cap": TARGET_CAP, "calibration_images": 32, "probes": 4}


def _raw(release=None, mode="input", **defence):
    raw = tiny_config_dict(mode, epochs=2)
    raw["release"] = dict(release or RELEASE)
    if defence:
        raw["defence"] = defence
    return raw


def _events(run_dir, name):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == name]


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated") / "run"
    return out, train_run(config_from_dict(_raw()), out, progress=False)


def test_sigma_is_calibrated_every_epoch_and_once_after_training(calibrated_run):
    out, record = calibrated_run
    events = _events(out, "calibrate")
    assert [(e["phase"], e["epoch"]) for e in events] == [
        ("joint", 0),
        ("joint", 1),
        ("release", 0),
    ]
    for event in events:  # the calibration images' p95 is on the target, per task
        for task in ("shape", "large"):
            assert event["sigma"][task] > 0
            assert event["dfil_p95"][task] == pytest.approx(10.0, rel=1e-6)
    final = events[-1]["sigma"]
    assert {t: record["release"][t]["sigma"] for t in final} == final
    assert events[0]["sigma"] != final  # the weights moved, so did sigma


def test_run_json_records_the_dfil_and_the_total_measured_with_fresh_probes(calibrated_run):
    _, record = calibrated_run
    for task in ("shape", "large"):
        dfil = record["release"][task]["dfil"]
        assert dfil["split"] == "train" and dfil["images"] == 32 and dfil["probes"] == 4
        assert dfil["sigma"] == record["release"][task]["sigma"]
        assert dfil["psnr_cap"] == pytest.approx(10 * math.log10(dfil["p95"]))
        # other probes than the calibration's: near the target, not on it
        assert dfil["p95"] != pytest.approx(10.0, rel=1e-9)
        assert dfil["p95"] == pytest.approx(10.0, rel=0.5)
    total = record["release_total"]
    assert total["p95"] > max(record["release"][t]["dfil"]["p95"] for t in ("shape", "large"))
    assert "keyed Gaussian noise" in record["privacy"]["scope"]


def test_load_producer_releases_with_the_calibrated_sigma_and_its_bound_holds(calibrated_run):
    """The loaded producer's own sensitivity at the calibration images gives the
    recorded dFIL: sigma comes from run.json, not from the config's defence.noise."""
    out, record = calibrated_run
    producer = load_producer(out)
    assert producer.secret is not None
    config = config_from_dict(record["config"])
    assert config.defence.noise == 0.0
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    pixels = calibration_pixels(data.train, data.transform, 32, seed=config.train.seed)
    transform = data.transform
    for task in ("shape", "large"):
        sigma = producer.release_of(task).noise
        assert sigma == record["release"][task]["sigma"]
        release = producer_release(producer, task, mean=transform.mean, std=transform.std)
        sensitivity = measure_sensitivity(release, pixels, probes=4, seed=config.train.seed + 1)
        assert sensitivity.stats(sigma).to_dict()["p95"] == pytest.approx(
            record["release"][task]["dfil"]["p95"], rel=1e-4
        )


def test_the_checkpoint_keeps_sigma_and_a_finished_run_resumes_without_recalibrating(
    tmp_path,
):
    config = config_from_dict(_raw())
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    config = config.with_label_classes(data.num_classes)
    first = Trainer(config, data, tmp_path, progress=False).fit()
    sigmas = {t: e["sigma"] for t, e in first.dfil.items() if e}
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert json.loads(state["release_sigma"]) == sigmas
    assert state["release_finished"] is True
    before = len(_events(tmp_path, "calibrate"))
    again = Trainer(config, data, tmp_path, progress=False)  # a fresh producer: sigma 0
    assert all(again.producer.release_of(t).noise == 0.0 for t in sigmas)
    result = again.fit()
    assert len(_events(tmp_path, "calibrate")) == before  # restored, not recalibrated
    assert {t: e["sigma"] for t, e in result.dfil.items() if e} == sigmas


def test_a_total_bound_caps_the_sum_over_tasks(tmp_path):
    release = {"max_total_dfil": 12.0, "calibration_images": 32, "probes": 4}
    out = tmp_path / "run"
    train_run(config_from_dict(_raw(release)), out, progress=False)
    for event in _events(out, "calibrate"):
        assert event["total_dfil_p95"] <= 12.0 * (1 + 1e-6)
        assert event["total_dfil_p95"] == pytest.approx(12.0, rel=1e-3)  # no looser than asked


def test_a_variational_release_needs_no_added_noise_when_its_variance_meets_the_target(
    tmp_path,
):
    """A learnt posterior variance is noise: with a loose target sigma stays 0, and the
    recorded dFIL is that of the learnt variance alone."""
    release = {"target_dfil": 1e9, "calibration_images": 32, "probes": 4}
    out = tmp_path / "run"
    record = train_run(
        config_from_dict(_raw(release, bottleneck_channels=2, beta=0.01)), out, progress=False
    )
    for task in ("shape", "large"):
        assert record["release"][task]["sigma"] == 0.0
        assert 0 < record["release"][task]["dfil"]["p95"] < 1e9


def test_calibration_images_are_fixed_by_the_seed_and_cut_to_the_split(tiny_config):
    config = tiny_config("input")
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    first = calibration_pixels(data.train, data.transform, 16, seed=3)
    assert torch.equal(first, calibration_pixels(data.train, data.transform, 16, seed=3))
    assert not torch.equal(first, calibration_pixels(data.train, data.transform, 16, seed=4))
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert len(calibration_pixels(data.train, data.transform, 10_000, seed=3)) == len(data.train)


@pytest.mark.parametrize(
    ("release", "message"),
    [
        ({"target_psnr_cap": 10, "target_dfil": 10}, "set one of them"),
        ({"target_dfil": 10, "max_total_dfil": 15}, "release.max_total_dfil=15 is below"),
        ({"target_psnr_cap": float("nan")}, "release.target_psnr_cap"),
        ({"target_psnr_cap": 4000}, "release.target_psnr_cap=4000 is invalid"),
        ({"target_dfil": 0}, "release.target_dfil=0"),
        ({"max_total_dfil": -1}, "release.max_total_dfil=-1"),
        ({"target_dfil": 1, "probes": 1}, "release.probes=1"),
        ({"target_dfil": 1, "calibration_images": 2}, "release.calibration_images=2"),
        ({"sigma": 1}, "unknown key(s) in release"),
    ],
)
def test_bad_release_sections_are_refused_naming_the_key(release, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(_raw(release))


def test_the_sum_of_two_tasks_at_the_target_is_what_the_total_must_allow():
    config = config_from_dict(_raw({"target_dfil": 10, "max_total_dfil": 20}))
    assert config.release.calibrated and config.release.per_task_dfil == 10
    capped = config_from_dict(_raw({"target_psnr_cap": 20.0}))
    assert capped.release.per_task_dfil == pytest.approx(100.0)


def test_the_recorded_total_is_the_per_image_sum_of_the_tasks(calibrated_run):
    """``release_total`` is the quantile of the sum, not the sum of the quantiles."""
    out, record = calibrated_run
    producer = load_producer(out)
    config = config_from_dict(record["config"])
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    pixels = calibration_pixels(data.train, data.transform, 32, seed=config.train.seed)
    transform = data.transform
    sensitivities = {
        t: measure_sensitivity(
            producer_release(producer, t, mean=transform.mean, std=transform.std),
            pixels,
            probes=4,
            seed=config.train.seed + 1,
        )
        for t in ("shape", "large")
    }
    sigmas = {t: producer.release_of(t).noise for t in sensitivities}
    total = total_dfil(sensitivities, sigmas).double()
    assert record["release_total"]["p95"] == pytest.approx(
        float(torch.quantile(total, QUANTILE)), rel=1e-4
    )
