"""benchmarks/fisher_caps.py: its points, its tables and its figure (nothing is trained)."""

from __future__ import annotations

import json

import pytest

from scripts import load_script


@pytest.fixture(scope="module")
def caps():
    return load_script("fisher_caps")


def _cap_entry(value, sigma: float, p95: float, utility: float) -> dict:
    dfil = {"mean": p95 / 3, "p95": p95, "psnr_cap": 10 * __import__("math").log10(p95)}
    return {
        "value": value,
        "sigma": sigma,
        "dfil_train": dict(dfil),
        "dfil_test": dict(dfil),
        "dfil_cost": {"seconds_per_image_and_task": 0.003, "threads": 2},
        "psnr": 11.5,
        "psnr_baseline": 11.8,
        "utility": utility,
        "leakage": 0.57,
        "leakage_attacker": "mlp",
        "majority": 0.576,
    }


def test_cap_points_are_the_recommended_defence_with_each_target(caps):
    points = caps.cap_points([0.0, -5.0])
    assert [p.id for p in points] == ["uncapped", "cap_psnr_cap_0", "cap_psnr_cap_-5"]
    assert "release.target_psnr_cap" not in points[0].overrides
    for point, cap in zip(points[1:], (0.0, -5.0), strict=True):
        assert point.overrides == {**caps.RECOMMENDED, "release.target_psnr_cap": cap}
    assert caps.RECOMMENDED["defence.channel"] == "vib" and caps.RECOMMENDED["censor.weight"] == 0
    heads = caps.head_points()
    assert [p.overrides["privacy.private_heads"] for p in heads] == [False, True]
    assert all("train.seed" not in p.overrides for p in heads)  # the config's seed
    seeded = caps.head_points([1])
    assert [p.id for p in seeded[2:]] == ["private_heads_false_seed1", "private_heads_true_seed1"]
    assert [p.overrides["train.seed"] for p in seeded[2:]] == [1, 1]


def test_render_writes_both_tables_and_the_figure(caps, tmp_path):
    results = {
        "dataset": "celeba",
        "public": "smile",
        "private": "gender",
        "caps": {
            "uncapped": _cap_entry("none", 0.0, 1.0, 0.888),
            "cap_psnr_cap_-5": _cap_entry(-5.0, 0.4, 0.316, 0.80),
        },
        "heads": {
            "private_heads_true": {
                "private_heads": True,
                "epsilon": 4.0,
                "noise_multiplier": 1.0,
                "blocks": 3,
                "utility": 0.7,
                "tasks": {"smile": 0.7},
                "train_seconds": 60,
            }
        },
    }
    path = tmp_path / caps.CAPS_JSON
    path.write_text(json.dumps(results))
    caps.render(path)
    text = (tmp_path / "caps.md").read_text()
    assert "| cap_psnr_cap_-5 | -5.0 | 0.4 | 0.316 |" in text
    assert "| -5.00 | 11.50 | 11.80 | 0.800 | 0.570 (mlp) | 0.576 |" in text
    assert "| private_heads_true | True | 4.00 | 1.000 | 1.732 | 0.700 |" in text  # σ·√3
    assert "3.0 ms per image and task" in text
    assert (tmp_path / "caps.png").stat().st_size > 0
