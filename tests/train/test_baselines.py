"""The baselines (``method:``): config, the direction of each step, run dirs, resume."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from metamorphosis import load_producer
from metamorphosis.config import LabelSpec, apply_overrides, config_from_dict
from metamorphosis.errors import ConfigError
from metamorphosis.experiment import train_run
from metamorphosis.losses.ssim import ssim_per_sample
from metamorphosis.train import checkpoint as checkpoint_module
from metamorphosis.train.loop import plan_phases
from metamorphosis.train.methods import PhasePlan, StepInputs, TrainingState, resolve_method
from metamorphosis.train.methods.deepobfuscator import prediction_entropy
from metamorphosis.train.methods.kd_mtl import Teacher
from metamorphosis.train.split import ConsumerReply
from tiny import tiny_config_dict


def _method(method: str, **train) -> dict:
    raw = tiny_config_dict("none", **train)
    raw["method"] = method
    return raw


def _resolved(raw: dict):
    return resolve_method(config_from_dict(raw))


def test_method_is_checked_against_the_privacy_mode_and_the_labels():
    assert _resolved(tiny_config_dict("both")).name == "metamorphosis"
    with pytest.raises(ConfigError, match="method='sparse' is invalid: expected one of "):
        _resolved(_method("sparse"))
    with pytest.raises(ConfigError, match="one shared feature map.*set privacy.mode=none or input"):
        _resolved({**tiny_config_dict("both"), "method": "kd-mtl"})
    no_private = {**_method("deepobfuscator"), "private_attributes": []}
    with pytest.raises(ConfigError, match="at least one in private_attributes"):
        _resolved(no_private)
    raw = apply_overrides(tiny_config_dict("none"), ["method=kd-mtl", "kd_mtl.distill_weight=2"])
    assert _resolved(raw).options.distill_weight == 2
    with pytest.raises(ConfigError, match="deepobfuscator.attribute_weight"):
        _resolved({**_method("deepobfuscator"), "deepobfuscator": {"attribute_weight": -1}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in kd_mtl: \['distil'\]"):
        _resolved({**_method("kd-mtl"), "kd_mtl": {"distil": 1}})
    with pytest.raises(ConfigError, match=r"unknown section\(s\): \['trian'\]; allowed: "):
        _resolved({**_method("universal"), "trian": {"epochs": 1}})


def test_each_method_plans_its_phases():
    def phases(raw):
        return [(p.name, p.dp) for p in plan_phases(config_from_dict(raw))]

    assert phases(_method("universal")) == [("joint", False)]
    assert phases(_method("deepobfuscator")) == [("adversarial", False)]
    kd = {**_method("kd-mtl"), "kd_mtl": {"teacher_epochs": 3}}
    assert phases(kd) == [("teachers", False), ("student", False)]
    assert [p.epochs for p in plan_phases(config_from_dict(kd))] == [3, 2]
    universal_dp = {**tiny_config_dict("input"), "method": "universal"}
    assert phases(universal_dp) == [("joint", True)]  # its step is per-sample: DP is allowed


def _deepobfuscator(decoder: nn.Module, optimizer, private_heads: dict, private: bool = True):
    """The method for one task, ``shape``, with a stand-in decoder and attacker (of
    ``background``, or none), images normalised as ``2x - 1``."""
    raw = {**_method("deepobfuscator"), "tasks": [{"name": "shape", "kind": "binary"}]}
    method = _resolved(raw)  # checked with its private attribute; the step may train without
    if not private:
        method.config = dataclasses.replace(method.config, private_attributes=())
    method.state = TrainingState(nn.ModuleDict({"decoder": decoder}), {"decoder": optimizer})
    method.private_heads = private_heads
    method.to_pixels = lambda images: (images + 1) / 2
    return method


_SHAPE_ONLY = PhasePlan("adversarial", ("shape",), True, False, 0.0, 1)


def test_prediction_entropy_matches_the_definition():
    logits = torch.tensor([[0.0], [2.0], [-30.0]])
    p = torch.sigmoid(logits[:, 0])
    expected = -(p * p.log() + (1 - p) * (1 - p).clamp_min(1e-30).log())
    torch.testing.assert_close(prediction_entropy("binary", logits), expected)
    uniform = prediction_entropy("multiclass", torch.zeros(2, 5))
    torch.testing.assert_close(uniform, torch.full((2,), math.log(5)))
    assert prediction_entropy("multiclass", torch.tensor([[50.0, 0.0, 0.0]]))[0] < 1e-6


class _SilentConsumer:
    """A consumer whose task needs nothing from the features (zero gradient)."""

    def __init__(self, head: nn.Module | None = None):
        self.head = head

    def step(self, features, target, *, update=True):
        return ConsumerReply(grad=torch.zeros_like(features), loss=0.0)


class _Producer(nn.Module):
    """An encoder with identity modules, as every baseline publishes."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, kernel_size, padding=kernel_size // 2)

    def forward(self, images, names):
        shared = self.encoder(images)
        return {name: shared for name in names}


def test_deepobfuscator_moves_the_encoder_away_from_both_adversaries():
    torch.manual_seed(0)
    producer = _Producer()
    decoder = nn.Sequential(nn.Conv2d(4, 3, 1), nn.Sigmoid())
    attacker = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 1))
    method = _deepobfuscator(
        decoder, torch.optim.SGD(decoder.parameters(), 0), {"background": attacker}
    )
    pixels = torch.rand(16, 3, 8, 8)
    images = pixels * 2 - 1  # normalised as the datasets do

    def similarity_and_entropy():
        with torch.no_grad():
            shared = producer.encoder(images)
            return (
                float(ssim_per_sample(decoder(shared), pixels).mean()),
                float(prediction_entropy("binary", attacker(shared)).mean()),
            )

    before = similarity_and_entropy()
    optimizer = torch.optim.SGD(producer.parameters(), lr=0.05)
    targets = {"shape": torch.zeros(16), "background": torch.zeros(16)}
    consumers = {"shape": _SilentConsumer(), "background": _SilentConsumer(attacker)}
    for _ in range(5):
        method.step(_SHAPE_ONLY, StepInputs(producer, optimizer, images, targets, consumers))
    after = similarity_and_entropy()
    assert after[0] < before[0]  # the fixed decoder reconstructs worse
    assert after[1] > before[1]  # the fixed attacker is less sure


def test_the_deepobfuscator_adversary_decoder_learns_to_reconstruct():
    torch.manual_seed(0)
    producer = _Producer(kernel_size=1)  # invertible per pixel: a 1×1 decoder can undo it
    decoder = nn.Sequential(nn.Conv2d(4, 3, 1), nn.Sigmoid())
    adam = torch.optim.Adam(decoder.parameters(), lr=0.05)
    method = _deepobfuscator(decoder, adam, {}, private=False)
    pixels = torch.rand(16, 3, 8, 8)
    images = pixels * 2 - 1  # normalised as the datasets do; the decoder targets pixels
    inputs = StepInputs(
        producer,
        torch.optim.SGD(producer.parameters(), lr=0.0),
        images,
        {"shape": torch.zeros(16)},
        {"shape": _SilentConsumer()},
    )
    losses = [
        method.step(_SHAPE_ONLY, inputs).losses["adversary_reconstruction"] for _ in range(100)
    ]
    mean_guess = float(((pixels - pixels.mean()) ** 2).mean())
    assert losses[-1] < 0.3 * mean_guess  # far better than guessing the mean pixel


def test_kd_mtl_teachers_learn_and_the_student_moves_towards_them():
    torch.manual_seed(0)
    spec = LabelSpec("large", kind="binary")
    teacher = Teacher(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Flatten(), nn.Linear(256, 1)))
    adaptor = nn.Conv2d(4, 4, 1)
    method = _resolved({**_method("kd-mtl"), "tasks": [{"name": "large", "kind": "binary"}]})
    method.state = TrainingState(
        nn.ModuleDict(
            {
                "teachers": nn.ModuleDict({"large": teacher}),
                "adaptors": nn.ModuleDict({"large": adaptor}),
            }
        ),
        {"teacher/large": torch.optim.Adam(teacher.parameters(), lr=0.01)},
    )
    images, labels = torch.rand(16, 3, 8, 8), (torch.rand(16) > 0.5).float()
    teachers, student = method.phases()
    producer = _Producer()
    optimizer = torch.optim.Adam([*producer.parameters(), *adaptor.parameters()], lr=0.01)
    inputs = StepInputs(producer, optimizer, images, {"large": labels}, {})
    teacher_losses = [method.step(teachers, inputs).losses["teacher_large"] for _ in range(20)]
    assert teacher_losses[-1] < 0.5 * teacher_losses[0]
    inputs.consumers = {"large": _SilentConsumer()}
    student = dataclasses.replace(student, labels=(spec.name,))
    distances = [method.step(student, inputs).losses["distill"] for _ in range(20)]
    assert distances[-1] < 0.5 * distances[0]


@pytest.mark.parametrize("method", ["universal", "deepobfuscator", "kd-mtl"])
def test_every_baseline_writes_a_run_dir_of_shared_features(tmp_path, method):
    record = train_run(config_from_dict(_method(method)), tmp_path / method, progress=False)
    assert record["config"]["method"] == method
    assert record["privacy"]["epsilon"] is None and record["privacy"]["phases"] == []
    assert set(record["metrics"]) == {"shape", "large", "background"}
    producer = load_producer(tmp_path / method)
    images = torch.rand(4, 3, 16, 16)
    features = producer(images)
    torch.testing.assert_close(features["shape"], features["large"])  # one shared map
    torch.testing.assert_close(features["shape"], producer.encode(images))
    assert not (tmp_path / method / "checkpoint.pt").exists()
    logged = _logged_terms(tmp_path / method / "metrics.jsonl")
    expected = {"universal": {"ssim_term"}, "deepobfuscator": {"adversarial_term"}}
    assert logged == expected.get(method, {"distill_term"})  # kd-mtl's teachers log none


def _logged_terms(metrics: Path) -> set[str]:
    """The extra-term keys of the epoch records: each method names its own term."""
    terms = set()
    for line in metrics.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "epoch":
            terms |= {k for k in event["train"] if k.endswith("_term")}
    return terms


class _Interrupt(Exception):
    pass


def test_kd_mtl_resumes_after_the_teachers_with_the_same_result(tmp_path, monkeypatch):
    import metamorphosis.train.loop as loop

    config = config_from_dict({**_method("kd-mtl"), "kd_mtl": {"teacher_epochs": 1}})
    reference = train_run(config, tmp_path / "straight", progress=False)
    real_save = checkpoint_module.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise _Interrupt  # killed right after the teachers' only epoch

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupt):
        train_run(config, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    resumed = train_run(config, tmp_path / "resumed", progress=False)
    events = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert {"event": "resume", "phase": "student", "epoch": 0} in events
    assert resumed["metrics"] == reference["metrics"]
