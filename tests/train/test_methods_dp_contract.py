"""DP validity as a contract of every registered training method.

DP-SGD's accounting holds only if, in a DP phase, the gradient of sample i's
loss does not change when another sample j of the batch changes. For every
registered method and every DP phase it plans, one step is taken twice on two
batches that differ in sample j only, and each other sample's per-sample
gradients (Opacus' ``grad_sample``, before clipping and noise) must agree.
A method that declares ``per_sample = False`` must instead be refused in a DP
phase, in one line that says why.
"""

from __future__ import annotations

import math

import pytest
import torch

from metamorphosis.config import GRAD_SAMPLERS, config_from_dict
from metamorphosis.data import build_datasets
from metamorphosis.errors import ConfigError
from metamorphosis.train.loop import Trainer
from metamorphosis.train.methods import METHODS, Method, PhasePlan, method_class
from metamorphosis.train.methods.metamorphosis import MetaMorphosis
from metamorphosis.train.split import StepResult
from tiny import tiny_config_dict

DP_MODES = ("input", "both")  # the privacy modes that plan DP phases
CHANGED = 3  # the sample that differs between the two batches


def _dp_config(name: str, mode: str, grad_sampler: str | None = None, defence: dict | None = None):
    raw = tiny_config_dict(mode, epochs=1, encoder_epochs=1, batch_size=8)
    raw["method"] = name
    if grad_sampler is not None:
        raw["privacy"]["grad_sampler"] = grad_sampler
    if defence is not None:
        raw["defence"] = defence
    return config_from_dict(raw)


def _trainer(config, tmp_path) -> Trainer:
    data = build_datasets(config.data, config.all_labels, seed=config.train.seed)
    return Trainer(config.with_label_classes(data.num_classes), data, tmp_path, progress=False)


def _dp_cases() -> list[tuple[str, str, str]]:
    """(method, mode, phase) for every DP phase of every registered per-sample method."""
    cases = []
    for name in METHODS.names():
        for mode in DP_MODES:
            try:
                method = method_class(name)(_dp_config(name, mode))
            except ConfigError:
                continue  # the method does not train in this mode
            if method.per_sample:
                cases += [(name, mode, p.name) for p in method.phases() if p.dp]
    return cases


def _batch(trainer: Trainer, changed: bool):
    """Eight training items; with ``changed``, item CHANGED swapped for another one."""
    indices = list(range(8))
    if changed:
        indices[CHANGED] = 20
    items = [trainer.data.train[i] for i in indices]
    images = torch.stack([image for image, _ in items])
    targets = {k: torch.stack([torch.as_tensor(t[k]) for _, t in items]) for k in items[0][1]}
    return images, targets


def _per_sample_step(trainer: Trainer, phase: PhasePlan, changed: bool):
    """Per-sample gradients of one step (captured where the DP optimiser would clip them)."""
    model, optimizer = trainer._setup_phase(phase)
    assert optimizer is not None
    captured: dict[str, torch.Tensor] = {}

    def capture(*args, **kwargs):
        for name, param in model.named_parameters():
            if param.requires_grad and getattr(param, "grad_sample", None) is not None:
                captured[name] = param.grad_sample.detach().clone()

    optimizer.step = capture  # no update: both steps see the same weights
    images, targets = _batch(trainer, changed)
    result = trainer._step(phase, model, optimizer, images, targets)
    trainer.privacy.unwrap(model)
    return captured, result


def _check_per_sample(
    name: str, mode: str, phase_name: str, tmp_path, defence: dict | None = None
) -> StepResult:
    torch.manual_seed(0)
    first = _trainer(_dp_config(name, mode, defence=defence), tmp_path / "a")
    torch.manual_seed(0)
    second = _trainer(_dp_config(name, mode, defence=defence), tmp_path / "b")
    phase = next(p for p in first.phases if p.name == phase_name)
    torch.manual_seed(1)  # the same training noise draws (bottleneck, release noise) in both
    grads, result = _per_sample_step(first, phase, changed=False)
    torch.manual_seed(1)
    changed_grads, _ = _per_sample_step(second, phase, changed=True)
    assert grads and grads.keys() == changed_grads.keys()
    others = [i for i in range(8) if i != CHANGED]
    moved = False
    for param, grad in grads.items():
        torch.testing.assert_close(
            changed_grads[param][others],
            grad[others],
            atol=1e-6,
            rtol=1e-5,
            msg=lambda m, p=param: (
                f"{name} / {phase_name}: {p}'s per-sample gradient of "
                f"sample i changed with sample {CHANGED}: {m}"
            ),
        )
        moved |= not torch.allclose(changed_grads[param][CHANGED], grad[CHANGED])
    assert moved, "the changed sample's own gradient must change (else the check is void)"
    return result


@pytest.mark.parametrize(("name", "mode", "phase"), _dp_cases())
def test_each_dp_phase_of_each_method_has_per_sample_gradients(name, mode, phase, tmp_path):
    result = _check_per_sample(name, mode, phase, tmp_path)
    checked = {**result.losses, **result.terms}
    assert all(math.isfinite(v) for v in checked.values()), checked
    print(f"{name} (privacy.mode={mode}) phase {phase}: checked {sorted(checked)}")
    if phase == "modules":  # the SSIM term is part of what was checked
        assert result.terms["ssim_term"] != 0


def test_the_cases_cover_every_per_sample_method_and_dp_phase():
    cases = _dp_cases()
    assert ("metamorphosis", "both", "encoder") in cases
    assert ("metamorphosis", "both", "modules") in cases
    assert ("metamorphosis", "input", "joint") in cases
    assert ("universal", "input", "joint") in cases
    per_sample = {n for n in METHODS.names() if method_class(n).per_sample}
    assert {name for name, _, _ in cases} == per_sample


@pytest.mark.parametrize("name", [n for n in METHODS.names() if not method_class(n).per_sample])
def test_a_method_with_batch_dependent_losses_is_refused_in_a_dp_phase(name, tmp_path):
    with pytest.raises(ConfigError) as caught:
        _trainer(_dp_config(name, "input"), tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"method={name!r} cannot train with DP-SGD" in message
    assert method_class(name).not_per_sample_because in message
    assert "set privacy.mode=none" in message


class _BatchMeanMethod(MetaMorphosis):
    """Claims per-sample losses but centres each feature map on the batch mean."""

    name = "batch-mean"

    def step(self, phase, inputs):
        names = list(phase.labels)
        features = inputs.model(inputs.images, names=names)
        centred = features[names[0]] - features[names[0]].mean(dim=0, keepdim=True)
        loss = centred.pow(2).mean()
        inputs.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        inputs.optimizer.step()
        return StepResult(losses={"spread": float(loss.detach())}, terms={}, batch_size=8)


def test_the_contract_check_catches_a_batch_statistic(tmp_path):
    METHODS.register("batch-mean")(_BatchMeanMethod)
    try:
        with pytest.raises(AssertionError, match="changed with sample 3"):
            _check_per_sample("batch-mean", "input", "joint", tmp_path)
    finally:
        METHODS.unregister("batch-mean")


def test_a_method_subclass_sees_the_base_contract():
    assert issubclass(method_class("metamorphosis"), Method)


@pytest.mark.parametrize("sampler", [s for s in GRAD_SAMPLERS if s != "hooks"])
@pytest.mark.parametrize("phase", ["encoder", "modules"])
def test_every_grad_sampler_gives_the_per_sample_gradients_of_opacus_hooks(
    sampler, phase, tmp_path
):
    """privacy.grad_sampler changes how per-sample gradients are computed, not what
    they are (both phases of mode both; the modules phase includes the SSIM term)."""
    grads = {}
    for name in ("hooks", sampler):
        torch.manual_seed(0)
        trainer = _trainer(_dp_config("metamorphosis", "both", name), tmp_path / name)
        plan = next(p for p in trainer.phases if p.name == phase)
        grads[name], _ = _per_sample_step(trainer, plan, changed=False)
    assert grads["hooks"] and grads["hooks"].keys() == grads[sampler].keys()
    for param, grad in grads["hooks"].items():
        torch.testing.assert_close(grads[sampler][param], grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("phase", ["encoder", "modules"])
def test_the_defence_terms_keep_the_step_per_sample(phase, tmp_path):
    """The bottleneck's β·KL and the training noise are per-sample too (mode both)."""
    defence = {"bottleneck_channels": 2, "beta": 0.1, "noise": 0.5}
    result = _check_per_sample("metamorphosis", "both", phase, tmp_path, defence)
    print(f"metamorphosis (defence {defence}) phase {phase}: checked {sorted(result.terms)}")
    assert result.terms["kl_term"] > 0


def test_a_narrow_gaussian_code_keeps_the_step_per_sample(tmp_path):
    """The pooled code (average and maximum per region) and its bounded channel mix no
    samples: one image's change moves its own per-sample gradient only."""
    defence = {"bottleneck_channels": 2, "code_size": 1, "channel": "gaussian", "noise": 0.5}
    result = _check_per_sample("censor", "both", "modules", tmp_path, defence)
    assert "kl_term" not in result.terms  # the Gaussian channel has no KL term
