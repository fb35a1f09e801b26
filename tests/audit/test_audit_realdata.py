"""The audit on a few hundred real CelebA faces, through the shipped config."""

from __future__ import annotations

import pytest

from metamorphosis.audit.run import run_audit
from metamorphosis.config import load_config
from metamorphosis.experiment import train_run

pytestmark = pytest.mark.realdata


def test_celeba_audit_on_a_few_hundred_faces(tmp_path, real_data_root):
    root = real_data_root("celeba")
    config = load_config(
        "configs/celeba_smile_gender.yaml",
        [
            f"data.root={root}",
            "data.max_train=256",
            "data.max_eval=128",
            "model.encoder=resnet18-slim",  # half width: the audit's attackers train 4x faster
            "train.epochs=1",
            "privacy.target_epsilon=null",
            "privacy.noise_multiplier=1.0",
            "privacy.accountant=rdp",
        ],
    )
    run_dir = tmp_path / "celeba"
    train_run(config, run_dir, progress=False)
    report = run_audit(run_dir, budget="quick", device="cpu", progress=False)
    assert report["data"]["test_items"] == 128
    assert report["run"]["feature_shapes"]["smile"] == [32, 16, 16]
    gender = [r for r in report["attribute_inference"] if r["attribute"] == "gender"]
    assert {r["source"] for r in gender} == {"smile", "encoder"}
    assert 0.4 < gender[0]["majority"] < 0.75  # about 42 % of these faces are male
    recon = report["reconstruction"]
    # even a briefly trained encoder keeps the coarse face: the decoder must beat the mean face
    assert recon["scores"]["encoder"]["psnr"] > recon["baseline"]["psnr"] + 1.0
    assert (run_dir / "audit" / "report.html").stat().st_size > 0
