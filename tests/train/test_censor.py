"""Censor: restarted adversary ensembles, the bounded per-sample term, and the method."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

import metamorphosis.train.methods.censor  # noqa: F401  (registers method=censor)
from metamorphosis.cli import app
from metamorphosis.config import LabelSpec, config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError
from metamorphosis.experiment import add_task
from metamorphosis.train import loop
from metamorphosis.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from metamorphosis.train.loop import Trainer
from metamorphosis.train.methods import resolve_method
from metamorphosis.train.methods.censor import (
    Censor,
    CensorAdversary,
    prior_distance,
    reset_due,
)
from tiny import tiny_config_dict

runner = CliRunner()
COUNTER = "models.schedule.steps"  # the schedule's buffer in the method state


def _raw(mode: str = "task", censor: dict | None = None, **train) -> dict:
    raw = tiny_config_dict(mode, **{"epochs": 1, "max_steps_per_epoch": 2, **train})
    raw["method"] = "censor"
    if censor is not None:
        raw["censor"] = censor
    return raw


def _trainer(raw: dict, tmp_path) -> Trainer:
    config = config_from_dict(raw)
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    return Trainer(config.with_label_classes(data.num_classes), data, tmp_path, progress=False)


def _batch(trainer: Trainer, size: int = 8):
    items = [trainer.data.train[i] for i in range(size)]
    images = torch.stack([image for image, _ in items])
    targets = {k: torch.stack([torch.as_tensor(t[k]) for _, t in items]) for k in items[0][1]}
    return images, targets


def _censor(trainer: Trainer) -> Censor:
    assert isinstance(trainer.method, Censor)
    return trainer.method


def _one_step(trainer: Trainer, images=None, targets=None):
    """One training step of the run's (only) phase; returns its result."""
    phase = trainer.phases[0]
    model, optimizer = trainer._setup_phase(phase)
    if images is None:
        images, targets = _batch(trainer)
    return trainer._step(phase, model, optimizer, images, targets)


# -- the restart schedule ---------------------------------------------------------------
def test_the_restarts_are_staggered_one_adversary_at_a_time():
    steps = range(1, 151)
    resets = {k: [s for s in steps if reset_due(k, s, 3, 50)] for k in range(3)}
    assert resets == {0: [50, 100, 150], 1: [34, 84, 134], 2: [17, 67, 117]}
    assert all(sum(reset_due(k, s, 3, 50) for k in range(3)) <= 1 for s in steps)


def test_a_scheduled_restart_reinitialises_that_adversary_alone(tmp_path):
    trainer = _trainer(_raw(censor={"adversaries": 3, "reset_every": 6}), tmp_path)
    method = _censor(trainer)
    counter = method.state.models["schedule"].steps
    counter.fill_(3)  # the next step is the 4th: (4 + 1 * 6 // 3) % 6 == 0 for adversary 1
    with torch.no_grad():
        for p in method.state.models["adversaries"].parameters():
            p.fill_(0.5)
    _one_step(trainer)
    assert method.steps == 4
    fresh = CensorAdversary(*_shape(method.ensembles("shape")["background"][0]))
    checked = 0
    for task in ("shape", "large"):
        for name, ensemble in method.ensembles(task).items():
            for k, adversary in enumerate(ensemble):
                state = method.state.optimizers[f"{task}/{name}/{k}"].state_dict()["state"]
                weights = dict(adversary.named_parameters())
                if k == 1:
                    assert state == {}  # its Adam starts afresh too
                    _assert_fresh(weights, dict(fresh.named_parameters()))
                else:  # one Adam step (lr 1e-3) away from the sentinel, state kept
                    assert state
                    for p in weights.values():
                        torch.testing.assert_close(p, torch.full_like(p, 0.5), atol=0.01, rtol=0)
                checked += 1
    assert checked == 2 * 1 * 3  # two public tasks, one private attribute, K = 3


def _shape(adversary: CensorAdversary) -> tuple[int, int]:
    first, last = adversary.body[0], adversary.body[-1]
    return first.in_channels, last.out_features


def _assert_fresh(weights: dict, fresh: dict) -> None:
    """Re-initialised: GroupNorm back at (1, 0), the rest spread as a new module's."""
    for name, p in weights.items():
        p, reference = p.detach(), fresh[name].detach()
        if p.numel() < 100:  # norms exactly as initialised; small biases: off the sentinel
            if name.startswith(("body.1.", "body.4.")):
                torch.testing.assert_close(p, reference)
            else:
                assert (p - 0.5).abs().max() > 0.05, name
            continue
        assert abs(float(p.std()) - float(reference.std())) < 0.2 * float(reference.std()), name
        assert abs(float(p.mean())) < 0.2 * float(reference.std()), name


# -- the censoring term -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "outputs", "prior"),
    [("multiclass", 3, [0.6, 0.3, 0.1]), ("binary", 1, [0.75, 0.25])],
)
def test_minimising_the_term_moves_a_fixed_adversary_to_the_prior(kind, outputs, prior):
    torch.manual_seed(0)
    adversary = CensorAdversary(8, outputs)
    with torch.no_grad():  # a confident adversary: far from the prior to begin with
        adversary.body[-1].weight.mul_(8.0)
        adversary.body[-1].bias.zero_()
        adversary.body[-1].bias[-1] = 3.0  # the last class: the prior's least likely
    adversary.requires_grad_(False)
    before = {k: v.clone() for k, v in adversary.state_dict().items()}
    pi = torch.tensor(prior)
    features = torch.randn(16, 8, 4, 4, requires_grad=True)
    optimizer = torch.optim.Adam([features], lr=0.05)

    def distances():
        return prior_distance(kind, adversary(features), pi)

    def mean_prediction_gap() -> float:
        logits = adversary(features)
        if kind == "binary":
            q = torch.sigmoid(logits.reshape(-1))
            probabilities = torch.stack([1 - q, q], dim=1)
        else:
            probabilities = torch.softmax(logits, dim=1)
        return float((probabilities.mean(dim=0) - pi).pow(2).sum().detach())

    start, start_gap = float(distances().mean().detach()), mean_prediction_gap()
    for _ in range(150):
        optimizer.zero_grad()
        distances().mean().backward()
        optimizer.step()
    assert start > 0.1 and start_gap > 0.1  # the check is not void
    assert float(distances().mean().detach()) < 0.1 * start
    assert mean_prediction_gap() < 0.1 * start_gap
    for key, value in adversary.state_dict().items():
        torch.testing.assert_close(value, before[key])  # only the features moved


def test_the_distance_is_bounded_by_two():
    huge = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0], [0.0, 0.0, 0.0]])
    multiclass = prior_distance("multiclass", huge, torch.tensor([1.0, 0.0, 0.0]))
    binary = prior_distance("binary", torch.tensor([[1e4], [-1e4]]), torch.tensor([1.0, 0.0]))
    for values in (multiclass, binary):
        assert bool((values >= 0).all()) and bool((values <= 2).all())
    assert float(multiclass[0]) == pytest.approx(2.0)  # certain of the class the prior lacks
    assert float(multiclass[1]) == pytest.approx(0.0)
    assert binary.tolist() == pytest.approx([2.0, 0.0])


def test_each_samples_term_and_gradient_depend_on_that_sample_alone(tmp_path):
    trainer = _trainer(_raw(censor={"tasks": False, "adversaries": 2}), tmp_path)
    method = _censor(trainer)
    channels = _shape(method.ensembles("shape")["background"][0])[0]
    torch.manual_seed(1)
    features = torch.randn(6, channels, 4, 4)
    changed = features.clone()
    changed[2] = torch.randn(channels, 4, 4) * 3

    def term_and_grad(x):
        x = x.clone().requires_grad_(True)
        per_sample = method.per_sample_term({"shape": x, "large": x * 0.5})
        (grad,) = torch.autograd.grad(per_sample.mean(), x)
        return per_sample.detach(), grad

    term, grad = term_and_grad(features)
    changed_term, changed_grad = term_and_grad(changed)
    others = [0, 1, 3, 4, 5]
    assert term.shape == (6,) and bool((term >= 0).all()) and bool((term <= 2).all())
    torch.testing.assert_close(changed_term[others], term[others])
    torch.testing.assert_close(changed_grad[others], grad[others])
    assert not torch.allclose(changed_term[2], term[2])


# -- options and refusals -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("weight", -1, "a finite number >= 0"),
        ("adversaries", 0, "an integer >= 1"),
        ("reset_every", 2.5, "an integer >= 1"),
        ("adversary_lr", 0, "a finite number > 0"),
        ("tasks", "maybe", "true or false"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as caught:
        resolve_method(config_from_dict(_raw(censor={key: value})))
    assert str(caught.value) == f"censor.{key}={value!r} is invalid: expected {expected}"


def test_the_cli_refuses_a_bad_option_in_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    args = ["--set", "censor.adversaries=0"]
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: censor.adversaries=0 is invalid: expected an integer >= 1"
    )


def test_nothing_to_censor_is_refused():
    raw = _raw()
    raw["private_attributes"] = []
    with pytest.raises(ConfigError, match="method='censor' has nothing to censor") as caught:
        resolve_method(config_from_dict(raw))
    assert "\n" not in str(caught.value)
    raw["censor"] = {"tasks": True}  # two classification tasks: each censors the other
    assert set(resolve_method(config_from_dict(raw)).censored_labels()) == {"shape", "large"}


def test_a_dense_private_attribute_is_refused_by_name():
    raw = _raw()
    raw["private_attributes"].append({"name": "parts", "column": "seg", "kind": "segmentation"})
    with pytest.raises(ConfigError) as caught:
        resolve_method(config_from_dict(raw))
    message = str(caught.value)
    assert "\n" not in message and "classifier adversaries" in message
    assert "parts (segmentation)" in message and "background" not in message


def test_censoring_tasks_from_one_shared_map_is_refused():
    with pytest.raises(ConfigError, match="censor.tasks=true .* every task shares one feature"):
        resolve_method(config_from_dict(_raw("none", censor={"tasks": True})))


def test_with_tasks_each_task_is_censored_of_the_others_and_stays_local(tmp_path):
    trainer = _trainer(_raw(censor={"tasks": True, "adversaries": 1}), tmp_path)
    method = _censor(trainer)
    assert sorted(method.ensembles("shape")) == ["background", "large"]
    assert sorted(method.ensembles("large")) == ["background", "shape"]
    shape_classes = trainer.config.tasks[0].num_classes
    assert method.ensembles("large")["shape"][0].body[-1].out_features == shape_classes
    result = _one_step(trainer)
    assert {"adversary_background", "adversary_shape", "adversary_large"} <= set(result.losses)
    assert not method.remote  # the producer reads the public tasks' labels
    assert resolve_method(config_from_dict(_raw())).remote


def test_the_priors_are_the_train_splits_class_frequencies(tmp_path):
    trainer = _trainer(_raw(censor={"tasks": True, "adversaries": 1}), tmp_path)
    priors = _censor(trainer).priors
    train = trainer.data.train
    for name in ("background", "shape", "large"):
        labels = torch.stack([torch.as_tensor(train[i][1][name]) for i in range(len(train))])
        counts = torch.bincount(labels.long(), minlength=len(priors[name]))
        torch.testing.assert_close(priors[name], counts.float() / len(train))
    assert len(priors["background"]) == 2
    assert len(priors["shape"]) == trainer.config.tasks[0].num_classes


@pytest.mark.parametrize(("mode", "private_moves_producer"), [("none", False), ("task", True)])
def test_a_private_label_reaches_the_producer_only_through_its_own_module(
    mode, private_moves_producer, tmp_path
):
    """With one shared map (mode none) the private heads train but send it nothing back."""
    grads = []
    for flipped in (False, True):
        torch.manual_seed(0)
        trainer = _trainer(_raw(mode, censor={"weight": 0.0}), tmp_path / str(flipped))
        phase = trainer.phases[0]
        model, optimizer = trainer._setup_phase(phase)
        captured = {}

        def capture(model=model, captured=captured):
            captured.update(
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            )

        optimizer.step = capture
        images, targets = _batch(trainer)
        if flipped:
            targets["background"] = 1 - targets["background"]
        trainer._step(phase, model, optimizer, images, targets)
        grads.append(captured)
    encoder = [n for n in grads[0] if n.startswith("encoder.")]
    assert encoder and grads[0].keys() == grads[1].keys()
    same = all(torch.equal(grads[0][n], grads[1][n]) for n in encoder)
    assert same != private_moves_producer


# -- training ---------------------------------------------------------------------------
def _train(tmp_path, *args: str):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(path), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    epochs = [
        record
        for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if record["event"] == "epoch"
    ]
    return out, epochs


def test_it_trains_through_the_cli_and_logs_its_term(tmp_path):
    out, epochs = _train(tmp_path, "--set", "method=censor", "--set", "privacy.mode=task")
    train = epochs[-1]["train"]
    assert train["censor_term"] > 0 and train["ssim_term"] > 0
    assert train["adversary_background"] > 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["method"] == "censor"
    # a task added later is censored against adversaries trained on its new module
    add_task(out, LabelSpec("count", kind="multiclass"), epochs=1, progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    added = [r for r in map(json.loads, lines) if r.get("phase") == "add-count"]
    assert added[-1]["train"]["censor_term"] > 0 and "adversary_background" in added[-1]["train"]


def test_it_trains_under_dp_since_its_term_is_per_sample(tmp_path):
    args = ["--set", "method=censor", "--set", "privacy.mode=input"]
    out, epochs = _train(tmp_path, *args)
    assert epochs[-1]["train"]["censor_term"] > 0
    record = json.loads((out / "run.json").read_text())
    assert record["privacy"]["epsilon"] > 0
    assert [p["name"] for p in record["privacy"]["phases"]] == ["joint"]


class _Killed(Exception):
    """Stands for a kill right after the first checkpoint."""


def test_a_resumed_run_continues_the_restart_schedule(tmp_path, monkeypatch):
    raw = _raw(epochs=2, max_steps_per_epoch=2, censor={"reset_every": 3})
    save = loop.save_checkpoint

    def save_then_die(path, state):
        save(path, state)
        raise _Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        _trainer(raw, tmp_path).fit()
    first = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert int(first["auxiliary"][COUNTER]) == 2  # one epoch of two steps
    monkeypatch.setattr(loop, "save_checkpoint", save)
    resumed = _trainer(raw, tmp_path)
    resumed.fit()
    assert _censor(resumed).steps == 4  # 2 before the kill + 2 after, not 2
    last = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert int(last["auxiliary"][COUNTER]) == 4
    assert set(last["auxiliary_optimizers"]) == {
        f"{t}/background/{k}" for t in ("shape", "large") for k in range(3)
    }
