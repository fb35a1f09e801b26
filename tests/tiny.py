"""Tiny configurations shared by the training and CLI tests."""

from __future__ import annotations


def tiny_config_dict(mode: str = "both", privacy: dict | None = None, **train) -> dict:
    """A run that trains in seconds: 16×16 generated scenes, tiny ResNet.

    The noise multiplier is explicit and the accountant RDP because noise
    calibration and the PRV accountant cost seconds a call at q = 0.2.
    """
    return {
        "data": {
            "name": "synthetic",
            "image_size": 16,
            "num_samples": 96,
            "val_fraction": 0.125,
            "test_fraction": 0.125,
        },
        "model": {"encoder": "test_resnet", "split_index": 5, "module": "cross-sec"},
        "tasks": [
            {"name": "shape", "column": "shape", "kind": "multiclass"},
            {"name": "large", "column": "large", "kind": "binary"},
        ],
        "private_attributes": [{"name": "background", "column": "background", "kind": "binary"}],
        "privacy": {
            "mode": mode,
            "noise_multiplier": 1.0,
            "delta": 1e-5,
            "omega": 0.1,
            "accountant": "rdp",
            **(privacy or {}),
        },
        "train": {
            "epochs": 2,
            "encoder_epochs": 1,
            "batch_size": 16,
            "lr": 1e-3,
            "seed": 3,
            **train,
        },
    }
