"""Every attacker on generated features whose answer is known, and how the best is chosen.

Features are N×4×2×2 maps whose channels are constant over the 2×2 grid (so pooling keeps
them): ``linear`` writes the label as the sign of channel 0, ``xor`` writes it as the XOR of
the signs of channels 0 and 1 (no linear map can read it), ``noise`` carries nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from metamorphosis.audit.attacks import ATTACKERS
from metamorphosis.audit.attacks.attacker import (
    AttackerResult,
    Cell,
    attack_cells,
    holdout_split,
    make_cell,
)
from metamorphosis.audit.attacks.knn import Knn
from metamorphosis.audit.attacks.leakage import DEFAULT_ATTACKERS, best_of, measure_leakage
from metamorphosis.audit.attacks.mlp import Mlp
from metamorphosis.audit.budget import AttackBudget
from metamorphosis.audit.features import FeatureSet
from metamorphosis.audit.fitting import Holdout, fit_early_stopped, predict
from metamorphosis.config import LabelSpec
from metamorphosis.errors import ConfigError

BUDGET = AttackBudget(
    name="test",
    train_items=None,
    test_items=None,
    epochs=40,
    reconstruction_epochs=1,
    batch_size=32,
    lr=1e-2,
    tsne_items=10,
    restarts=2,
    patience=4,
    holdout=0.2,
)
LABEL = LabelSpec(name="label", column="label", kind="binary")
XOR = LabelSpec(name="xor", column="xor", kind="binary")
TRAIN, TEST = 320, 200


def _features(seed: int) -> tuple[FeatureSet, FeatureSet]:
    generator = torch.Generator().manual_seed(seed)
    n = TRAIN + TEST
    z = torch.randn(n, 4, generator=generator)
    label = (z[:, 0] > 0).float()
    xor = ((z[:, 0] > 0) ^ (z[:, 1] > 0)).float()
    maps = z[:, :, None, None].expand(n, 4, 2, 2).contiguous()
    noise = torch.randn(n, 4, 2, 2, generator=generator)
    features = FeatureSet(
        sources={"linear": maps, "xor": maps, "noise": noise, "encoder": maps},
        images=torch.zeros(n, 3, 4, 4),
        targets={"label": label, "xor": xor},
        item_ids=[str(i) for i in range(n)],
    )
    return features.select(range(TRAIN)), features.select(range(TRAIN, n))


@pytest.fixture(scope="module")
def data() -> tuple[FeatureSet, FeatureSet]:
    return _features(0)


def _head(spec: LabelSpec) -> nn.Module:
    """A small consumer-like head: a 1×1 conv stack, then a linear layer."""
    return nn.Sequential(
        nn.Conv2d(4, 16, 1), nn.ReLU(), nn.Flatten(1), nn.Linear(16 * 4, spec.num_outputs)
    )


def _cell(data, spec: LabelSpec, source: str, budget: AttackBudget = BUDGET) -> Cell:
    train, test = data
    split = holdout_split(len(train), budget.holdout, 0)
    return make_cell(spec, source, train, test, split=split, make_head=_head, budget=budget)


def _run(data, name: str, spec: LabelSpec, source: str) -> AttackerResult:
    (result,) = attack_cells(
        ATTACKERS.create(name), [_cell(data, spec, source)], data[1].targets, seed=0
    )
    return result


@pytest.mark.parametrize("name", DEFAULT_ATTACKERS)
def test_every_attacker_reads_a_linearly_written_label(data, name):
    assert _run(data, name, LABEL, "linear").best > 0.9


@pytest.mark.parametrize("name", DEFAULT_ATTACKERS)
def test_no_attacker_finds_a_label_in_noise(data, name):
    majority = float(data[1].targets["label"].mean())
    majority = max(majority, 1 - majority)
    # 200 test items: one restart's accuracy has a standard deviation of about 3.5 points
    assert _run(data, name, LABEL, "noise").best < majority + 0.1


def test_nonlinear_attackers_read_what_a_linear_probe_cannot(data):
    probe = _run(data, "linear_probe", XOR, "xor").best
    assert probe < 0.7  # XOR of two signs: no linear map does much better than chance
    for name in ("mlp", "knn", "retrained_head"):
        assert _run(data, name, XOR, "xor").best > probe + 0.15, name


def test_restarts_differ_by_seed_and_repeat_with_it(data):
    cell = _cell(data, LABEL, "noise")
    first, second, again = (Mlp().predict(cell, seed=s) for s in (1, 2, 1))
    assert not torch.equal(first, second)
    assert torch.equal(first, again)
    result = _run(data, "mlp", LABEL, "noise")
    assert len(result.values) == BUDGET.restarts and result.values[0] != result.values[1]


def test_a_deterministic_attacker_runs_once(data):
    result = _run(data, "knn", LABEL, "linear")
    assert len(result.values) == 1


def test_knn_picks_k_on_the_held_out_slice(data):
    cell = _cell(data, LABEL, "noise")
    assert Knn()._choose_k(cell) in (1, 3, 5, 9, 15, 25)
    budget = AttackBudget(**{**BUDGET.to_dict(), "holdout": 0.0, "patience": None})
    without = _cell(data, LABEL, "noise", budget)
    assert without.holdout_inputs is None and Knn()._choose_k(without) == 9  # the middle one


def _judged(log: list[float]):
    def evaluate(outputs: Tensor, targets: Tensor) -> tuple[float, float]:
        loss = float(nn.functional.binary_cross_entropy_with_logits(outputs.squeeze(1), targets))
        log.append(-loss)
        return -loss, loss

    return evaluate


def _noise_fit(budget: AttackBudget, holdout: bool) -> tuple[nn.Module, list[float], object]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=generator), torch.randint(0, 2, (96,), generator=generator)
    log: list[float] = []
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    stop = fit_early_stopped(
        model,
        x[:64],
        y[:64].float(),
        lambda out, t: nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), t),
        holdout=Holdout(x[64:], y[64:].float(), _judged(log)) if holdout else None,
        budget=budget,
        seed=0,
    )
    return model, log, stop


def test_early_stopping_stops_and_keeps_the_best_epoch():
    """Labels of pure noise: the held-out loss soon rises and the attacker stops."""
    budget = AttackBudget(**{**BUDGET.to_dict(), "epochs": 200, "patience": 3, "lr": 1e-2})
    model, log, stop = _noise_fit(budget, holdout=True)
    assert stop.epochs < 200
    assert stop.epochs == stop.best_epoch + 3
    assert log[stop.best_epoch - 1] == max(log)  # the kept epoch is the best one held out
    recheck: list[float] = []
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=generator), torch.randint(0, 2, (96,), generator=generator)
    _judged(recheck)(predict(model, x[64:]), y[64:].float())
    assert recheck[0] == pytest.approx(max(log))  # ... and its weights are the ones kept


def test_without_a_held_out_slice_every_epoch_runs():
    budget = AttackBudget(**{**BUDGET.to_dict(), "epochs": 7, "patience": None})
    _, log, stop = _noise_fit(budget, holdout=False)
    assert (stop.epochs, stop.best_epoch, log) == (7, 7, [])


def test_best_of_takes_the_maximum_or_the_minimum_and_skips_missing_values():
    values = {"a": 0.7, "b": None, "c": 0.9, "d": math.nan, "e": 0.9}
    assert best_of(values, higher_is_better=True) == ("c", 0.9)  # ties go to the first
    assert best_of(values, higher_is_better=False) == ("a", 0.7)
    assert best_of({"a": None}, higher_is_better=True)[0] == ""


def test_a_lower_is_better_metric_keeps_the_lowest_restart():
    result = AttackerResult("mlp", "abs_err", False, [0.4, 0.2, math.nan])
    assert result.best == 0.2
    assert AttackerResult("mlp", "accuracy", True, [0.4, 0.8]).best == 0.8


def test_holdout_split_is_disjoint_seeded_and_refuses_slivers():
    fit, held = holdout_split(50, 0.2, seed=3)
    assert held is not None and len(held) == 10 and len(fit) == 40
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(50))
    assert torch.equal(holdout_split(50, 0.2, seed=3)[1], held)
    assert not torch.equal(holdout_split(50, 0.2, seed=4)[1], held)
    assert holdout_split(5, 0.2, seed=0)[1] is None  # one item held out decides nothing
    assert holdout_split(50, 0.0, seed=0)[1] is None


ENTRY_KEYS = {
    "source",
    "label",
    "metric",
    "higher_is_better",
    "best",
    "attackers",
    "restarts",
    "majority",
    "label_floor",
    "universal",
}


def test_leakage_entries_follow_the_report_schema():
    train, test = _features(1)
    public = LabelSpec(name="label", column="label", kind="binary")
    budget = AttackBudget(**{**BUDGET.to_dict(), "epochs": 5})
    # "label" is a public task here: its features ("label") and its true labels both exist
    train.sources["label"], test.sources["label"] = train.sources["noise"], test.sources["noise"]
    result = measure_leakage(
        _head, [public, XOR], train, test, sources=["encoder", "label"], budget=budget, seed=0
    )
    entries = [e.to_dict() for e in result.entries]
    assert [(e["source"], e["label"]) for e in entries] == [
        ("encoder", "label"),
        ("encoder", "xor"),
        ("label", "xor"),  # never a task from its own features
    ]
    for entry in entries:
        assert set(entry) == ENTRY_KEYS
        assert list(entry["attackers"]) == list(DEFAULT_ATTACKERS)
        best = entry["best"]
        assert best["value"] == entry["attackers"][best["attacker"]]
        assert best["value"] == max(v for r in entry["restarts"].values() for v in r)
        assert len(entry["restarts"]["mlp"]) == 2 and len(entry["restarts"]["knn"]) == 1
        assert 0 < entry["majority"] < 1
    universal = {e["label"]: e["best"]["value"] for e in entries if e["source"] == "encoder"}
    assert all(e["universal"] == universal[e["label"]] for e in entries)
    assert entries[0]["label_floor"] is None  # the encoder output has no labels of its own
    floor = entries[2]["label_floor"]
    assert floor is not None and entries[2]["majority"] - 1e-9 <= floor <= 1
    # the consumer head also ran on the diagonal: the retrained swap matrix is complete
    assert set(result.retrained.matrix["label"]) == {"label", "xor"}


def test_dense_labels_skip_the_attackers_that_cannot_predict_maps_and_keep_the_lowest_error():
    generator = torch.Generator().manual_seed(0)
    n = 60
    maps = torch.rand(n, 2, 4, 4, generator=generator)
    depth = nn.functional.interpolate(maps[:, :1], size=(8, 8), mode="bilinear") + 0.5
    features = FeatureSet(
        sources={"encoder": maps},
        images=torch.zeros(n, 3, 8, 8),
        targets={"depth": depth},
        item_ids=[str(i) for i in range(n)],
    )
    spec = LabelSpec(name="depth", column="depth", kind="depth")
    budget = AttackBudget(**{**BUDGET.to_dict(), "epochs": 3})
    result = measure_leakage(
        None,
        [spec],
        features.select(range(40)),
        features.select(range(40, n)),
        sources=["encoder"],
        budget=budget,
        seed=0,
        attackers=("mlp", "linear_probe", "knn"),
    )
    (entry,) = [e.to_dict() for e in result.entries]
    assert list(entry["attackers"]) == ["linear_probe"]
    assert result.skipped == {"depth": ["mlp", "knn"]}
    assert entry["higher_is_better"] is False and entry["metric"] == "abs_err"
    assert entry["best"]["value"] == min(entry["restarts"]["linear_probe"])
    assert entry["majority"] is None and entry["label_floor"] is None


def test_an_attacker_refuses_a_label_it_cannot_predict(data):
    depth = LabelSpec(name="label", column="label", kind="depth")
    with pytest.raises(ConfigError, match="does not apply"):
        attack_cells(Mlp(), [_cell(data, depth, "linear")], data[1].targets, seed=0)


def test_unknown_attacker_names_the_valid_ones():
    with pytest.raises(ConfigError, match="knn"):
        ATTACKERS.create("svm")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"restarts": 0}, "restarts=0"),
        ({"patience": 0}, "patience=0"),
        ({"holdout": 0.9}, "holdout=0.9"),
        ({"holdout": 0.0}, "needs a held-out slice"),
    ],
)
def test_budget_refuses_bad_stopping_settings(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        AttackBudget(**{**BUDGET.to_dict(), **change})
