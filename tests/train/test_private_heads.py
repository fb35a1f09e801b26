"""``privacy.private_heads``: every head of a DP phase trains with DP-SGD, one accountant."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from metamorphosis.config import config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError
from metamorphosis.experiment import train_run
from metamorphosis.privacy.engine import DPEngine, HeadDP, PlannedPhase
from metamorphosis.train.loop import PhasePlan, Trainer
from tiny import tiny_config_dict


def _trainer(tmp_path, private_heads: bool, **privacy):
    raw = tiny_config_dict("input", {"private_heads": private_heads, **privacy}, epochs=1)
    raw["train"]["optimizer"] = "sgd"  # an update proportional to the gradient
    config = config_from_dict(raw)
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    return Trainer(config.with_label_classes(data.num_classes), data, tmp_path, progress=False)


def test_each_block_is_noised_at_sigma_times_root_blocks(tiny_config):
    config = tiny_config("input")
    engine = DPEngine(
        config.privacy,
        [PlannedPhase("joint", True, 1)],
        train_size=80,
        batch_size=16,
        steps_per_epoch=5,
    )
    assert engine.block_noise(1) == engine.noise_multiplier == 1.0
    assert engine.block_noise(4) == pytest.approx(2.0)
    assert engine.head_dp(4) == HeadDP(2.0, config.privacy.max_grad_norm, 16)
    head = nn.Linear(3, 2)
    wrapped, optimizer = engine.wrap(head, torch.optim.SGD(head.parameters(), lr=0.1), blocks=4)
    assert isinstance(optimizer, DPOptimizer)
    assert optimizer.noise_multiplier == pytest.approx(2.0)
    assert optimizer.max_grad_norm == config.privacy.max_grad_norm
    assert optimizer.expected_batch_size == 16
    wrapped(torch.randn(5, 3)).sum().backward()
    assert head.weight.grad_sample.shape == (5, 2, 3)  # per-sample gradients
    engine.unwrap(wrapped)


def test_in_a_dp_phase_the_producer_and_every_head_step_with_dp_sgd(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, True)
    seen = {}
    original = Trainer._train_batches

    def spy(self, phase, model, optimizer, bar, log, epoch):
        seen["producer"] = optimizer.noise_multiplier
        seen["heads"] = {
            name: consumer.optimizer.noise_multiplier
            for name, consumer in self.local_consumers.items()
            if isinstance(consumer.optimizer, DPOptimizer)
        }
        return original(self, phase, model, optimizer, bar, log, epoch)

    monkeypatch.setattr(Trainer, "_train_batches", spy)
    result = trainer.fit()
    blocks = 1 + 3  # the producer, the two public heads, the private attribute's
    assert seen["producer"] == pytest.approx(math.sqrt(blocks))
    assert seen["heads"] == pytest.approx(dict.fromkeys(["shape", "large", "background"], 2.0))
    assert result.noise_multiplier == 1.0  # what the accountant counts
    for consumer in trainer.local_consumers.values():  # unwrapped after the phase
        assert not isinstance(consumer.optimizer, DPOptimizer)
        assert not hasattr(consumer.head, "_module")


def test_clipping_reaches_the_heads(tmp_path):
    """With a clipping bound C = 1e-7 a DP head's SGD step is at most lr · (n/B · C + its
    noise, σ·2·C/B a value): the heads barely move; the same heads without
    private_heads move by orders of magnitude more."""
    moved = {}
    for private in (False, True):
        trainer = _trainer(tmp_path / str(private), private, max_grad_norm=1e-7)
        before = {n: p.detach().clone() for n, p in trainer.heads.named_parameters()}
        trainer.fit()
        moved[private] = max(
            float((p.detach() - before[n]).abs().max()) for n, p in trainer.heads.named_parameters()
        )
    steps = trainer.steps_per_epoch
    momentum_gain = 10.0  # SGD momentum 0.9 sums to at most 10 times one step's update
    # lr · steps · gain · C · (n / B ≤ 3, plus noise of 6 sd: 6 · 2 / 16 < 1)
    bound = 1e-3 * steps * momentum_gain * 1e-7 * 4
    assert moved[True] < bound
    assert moved[False] > 1000 * bound


def test_run_json_says_epsilon_covers_every_weight_at_the_same_epsilon(tmp_path):
    records = {}
    for private in (False, True):
        raw = tiny_config_dict("input", {"private_heads": private}, epochs=1)
        records[private] = train_run(config_from_dict(raw), tmp_path / str(private), progress=False)
    assert records[True]["privacy"]["private_heads"] is True
    assert records[False]["privacy"]["private_heads"] is False
    assert records[True]["privacy"]["epsilon"] == records[False]["privacy"]["epsilon"]
    assert "covers every weight" in records[True]["privacy"]["scope"]
    assert "It covers no head" in records[False]["privacy"]["scope"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"privacy.mode": "none"}, "privacy.mode='none' has no DP phase"),
        ({"privacy.mode": "task"}, "privacy.mode='task' has no DP phase"),
        ({"method": "censor"}, "method='censor': only metamorphosis, universal"),
        ({"method": "kd-mtl"}, "method='kd-mtl': only metamorphosis, universal"),
        ({"defence.erase": "linear"}, "defence.erase='linear'"),
    ],
)
def test_configs_private_heads_cannot_cover_are_refused(edit, message):
    raw = tiny_config_dict("input", {"private_heads": True})
    for key, value in edit.items():
        if "." in key:
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
        else:
            raw[key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(raw)


def test_a_phase_without_dp_is_refused(tiny_config, tmp_path):
    config = tiny_config("input", {"private_heads": True})
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    config = config.with_label_classes(data.num_classes)
    plain = PhasePlan("plain", ("shape",), True, False, 0.0, 1)
    with pytest.raises(ConfigError, match="a phase without DP-SGD trains heads without it"):
        Trainer(config, data, tmp_path, progress=False, phases=[plain])
