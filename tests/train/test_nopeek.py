"""NoPeek: the distance correlation it minimises, and the method that trains with it."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import metamorphosis.train.methods.nopeek  # noqa: F401  (registers method=nopeek)
from metamorphosis import load_producer
from metamorphosis.cli import app
from metamorphosis.config import config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError
from metamorphosis.losses.distance_correlation import distance_correlation
from metamorphosis.train.loop import Trainer
from metamorphosis.train.methods import StepInputs, resolve_method
from metamorphosis.train.methods.nopeek import NoPeek, NoPeekOptions
from tiny import tiny_config_dict

runner = CliRunner()


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the statistic ---------------------------------------------------------------------
def test_independent_batches_have_a_distance_correlation_that_vanishes_with_n():
    """The sample statistic (a V-statistic) is biased up by O(1/sqrt(N)) at independence:
    about 0.2 at N = 64, 0.1 at N = 256, 0.05 at N = 1024 for scalars."""
    values = [
        float(distance_correlation(_randn(n, 1, seed=0), _randn(n, 1, seed=1)))
        for n in (64, 256, 1024)
    ]
    assert values == sorted(values, reverse=True), values
    assert values[-1] < 0.08, values


@pytest.mark.parametrize("scale", [2.5, -0.3])
def test_a_similarity_transform_has_a_distance_correlation_of_one(scale):
    x = _randn(64, 3, 2, 2, seed=0)  # flattened to 64 × 12
    rotation, _ = torch.linalg.qr(_randn(12, 12, seed=1))
    y = scale * x.flatten(1) @ rotation + _randn(12, seed=2)
    assert float(distance_correlation(x, y)) == pytest.approx(1.0, abs=1e-4)


def test_it_grows_with_a_nonlinear_dependence_that_pearson_misses():
    x = torch.rand(512, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = _randn(512, 1, seed=1)
    y_exact = x.pow(2)
    pearson = torch.corrcoef(torch.cat([x, y_exact], dim=1).T)[0, 1]
    assert abs(float(pearson)) < 0.1  # no linear dependence to see
    values = [
        float(distance_correlation(x, x.pow(2) + sigma * noise)) for sigma in (4.0, 1.0, 0.25, 0.0)
    ]
    assert values == sorted(values) and len(set(values)) == 4, values
    assert values[0] < 0.2 and values[-1] > 0.45, values


def test_it_is_symmetric():
    x, y = _randn(32, 5, seed=0), torch.tanh(_randn(32, 7, seed=1) + _randn(32, 1, seed=0))
    torch.testing.assert_close(distance_correlation(x, y), distance_correlation(y, x))


def _finite_gradients(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = distance_correlation(x, y)
    value.backward()
    assert math.isfinite(float(value.detach()))
    assert x.grad is not None and y.grad is not None
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    return [value.detach(), x.grad, y.grad]


def test_its_gradient_is_finite_on_identical_inputs():
    x = _randn(16, 6, seed=0)
    value, _, _ = _finite_gradients(x, x)
    assert float(value) == pytest.approx(1.0, abs=1e-4)


def test_its_gradient_is_finite_with_two_identical_samples():
    x = _randn(16, 6, seed=0)
    x[1] = x[0]  # a zero distance off the diagonal
    _finite_gradients(x, torch.sin(3 * x[:, :2]))


def test_a_constant_batch_has_no_dependence_and_a_finite_gradient():
    value, _, _ = _finite_gradients(torch.ones(8, 4), _randn(8, 3, seed=0))
    assert float(value) < 1e-3


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.zeros(8, 3), torch.zeros(6, 3), "same size, got 8 and 6 samples"),
        (torch.zeros(1, 3), torch.zeros(1, 3), "at least 2 samples, got 1"),
        (torch.tensor(1.0), torch.zeros(1), "x must have a batch dimension"),
    ],
)
def test_bad_shapes_are_clear_errors(x, y, message):
    with pytest.raises(ValueError, match=message):
        distance_correlation(x, y)


def test_minimising_it_lowers_the_dependence_of_features_on_the_input():
    torch.manual_seed(0)
    x = _randn(128, 8, seed=1)
    module = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-2)

    def dcor() -> float:
        with torch.no_grad():
            return float(distance_correlation(x, module(x)))

    before = dcor()
    for _ in range(50):
        optimizer.zero_grad()
        distance_correlation(x, module(x)).backward()
        optimizer.step()
    # what independent 4-d features score at N = 128 (the statistic's bias, about 0.38)
    independent = float(distance_correlation(x, _randn(128, 4, seed=2)))
    assert dcor() < before - 0.2, (before, dcor())
    assert dcor() < independent + 0.15, (independent, dcor())


# -- the method ------------------------------------------------------------------------
def _raw(mode: str, **train) -> dict:
    raw = tiny_config_dict(mode, epochs=1, max_steps_per_epoch=2, **train)
    raw["method"] = "nopeek"
    return raw


def _config_file(tmp_path, mode: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(mode, epochs=1, max_steps_per_epoch=2)))
    return str(path)


def _train(tmp_path, mode: str, *args: str):
    out = tmp_path / "run"
    command = ["train", _config_file(tmp_path, mode), "--out", str(out), "--set", "method=nopeek"]
    return out, runner.invoke(app, [*command, *args])


def test_its_options_default_and_are_checked_in_one_line(tmp_path):
    assert NoPeekOptions().weight == 0.1
    assert resolve_method(config_from_dict(_raw("task"))).options == NoPeekOptions(0.1)
    _, result = _train(tmp_path, "task", "--set", "nopeek.weight=-1")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: nopeek.weight=-1 is invalid: expected a finite number >= 0"
    )


@pytest.mark.parametrize("mode", ["input", "both"])
def test_it_is_refused_in_a_dp_phase_in_one_line(mode):
    with pytest.raises(ConfigError) as caught:
        resolve_method(config_from_dict(_raw(mode)))
    message = str(caught.value)
    assert "\n" not in message
    assert "method='nopeek' cannot train with DP-SGD" in message
    assert NoPeek.not_per_sample_because in message
    assert "statistic of the whole batch" in message


def test_the_cli_refuses_it_with_dp_before_training(tmp_path):
    out, result = _train(tmp_path, "none", "--set", "privacy.mode=input")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("error: method='nopeek' cannot train with DP-SGD (phase 'joint'")
    assert not (out / "metrics.jsonl").exists()


def test_it_trains_through_the_cli_and_logs_its_term(tmp_path):
    args = ["--set", "privacy.mode=task", "--set", "nopeek.weight=0.5"]
    out, result = _train(tmp_path, "none", *args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["method"] == "nopeek"
    assert record["config"]["nopeek"] == {"weight": 0.5}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert epochs
    term = epochs[-1]["train"]["nopeek_term"]
    # two public tasks, each dCor in (0, 1]
    assert math.isfinite(term) and 0 < term <= 2 * 0.5
    assert epochs[-1]["train"]["ssim_term"] != 0  # privacy.mode task keeps the SSIM term
    features = load_producer(out)(torch.rand(2, 3, 16, 16))
    assert not torch.equal(features["shape"], features["large"])  # a module per task


def _trainer(tmp_path, weight: float) -> Trainer:
    raw = _raw("task")
    raw["nopeek"] = {"weight": weight}
    config = config_from_dict(raw)
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    return Trainer(config.with_label_classes(data.num_classes), data, tmp_path, progress=False)


def _step(trainer: Trainer, optimizer: torch.optim.Optimizer | None):
    """One step of the joint phase on the first eight training items."""
    items = [trainer.data.train[i] for i in range(8)]
    images = torch.stack([image for image, _ in items])
    targets = {k: torch.stack([torch.as_tensor(t[k]) for _, t in items]) for k in items[0][1]}
    inputs = StepInputs(trainer.producer, optimizer, images, targets, trainer.consumers)
    return images, trainer.method.step(trainer.phases[0], inputs)


def test_its_term_is_the_weighted_dcor_of_each_public_task(tmp_path):
    trainer = _trainer(tmp_path, 0.25)
    images, result = _step(trainer, None)  # no optimiser: the producer stays put
    with torch.no_grad():
        features = trainer.producer(images, names=["shape", "large", "background"])
    public = [distance_correlation(images, features[n]) for n in ("shape", "large")]
    assert result.terms["nopeek_term"] == pytest.approx(0.25 * float(sum(public)), rel=1e-5)
    assert set(result.losses) == {"shape", "large", "background"}


def test_its_term_moves_the_producers_gradient(tmp_path):
    """Same seed, same batch: only the dCor term differs, and the encoder's gradient with it."""
    grads = []
    for weight in (0.0, 1.0):
        trainer = _trainer(tmp_path / str(weight), weight)
        optimizer = torch.optim.SGD(trainer.producer.parameters(), lr=0.0)
        _step(trainer, optimizer)
        grads.append({n: p.grad for n, p in trainer.producer.encoder.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(g is not None for g in grads[1].values())
    assert any(not torch.allclose(grads[0][n], grads[1][n]) for n in grads[0])
