"""The run directory (CONTRACT in DESIGN.md): writing it and reading it back.

``audit`` and ``serve`` read only the run dir, so everything needed to
rebuild the producer (resolved config with class counts, input shape and the
preprocessing transform) lives in ``run.json`` next to the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .config import Config, config_from_dict, config_to_dict
from .data.transforms import ImageTransform
from .errors import MetaMorphosisError, RunDirError
from .models.producer import Producer, build_heads, build_network, build_producer
from .train.checkpoint import save_safetensors, write_json
from .train.loop import TrainResult

__all__ = [
    "RUN_FORMAT_VERSION",
    "write_run",
    "read_run_json",
    "load_config_of_run",
    "load_producer",
    "load_heads",
]

RUN_FORMAT_VERSION = 1
RUN_JSON = "run.json"
PRODUCER_FILE = "producer.safetensors"
HEADS_FILE = "heads.safetensors"


def write_run(
    run_dir: str | Path,
    config: Config,
    producer: Producer,
    heads: nn.ModuleDict,
    result: TrainResult,
    transform: ImageTransform,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write weights and ``run.json`` (last, so its presence means 'complete').

    ``extra`` adds (or replaces) top-level entries of ``run.json``.
    """
    run_dir = Path(run_dir)
    save_safetensors(run_dir / PRODUCER_FILE, producer.state_dict(), {"format": "metamorphosis"})
    save_safetensors(run_dir / HEADS_FILE, heads.state_dict(), {"format": "metamorphosis"})
    with torch.no_grad():
        probe = torch.zeros(1, *producer.input_shape)
        shapes = {name: list(f.shape[1:]) for name, f in producer(probe).items()}
    privacy = config.privacy
    record = {
        "version": RUN_FORMAT_VERSION,
        "config": config_to_dict(config),
        "tasks": list(producer.tasks),
        "private_attributes": list(producer.private_attributes),
        "input_shape": list(producer.input_shape),
        "feature_shapes": shapes,
        "privacy": {
            "mode": privacy.mode,
            "epsilon": result.epsilon,
            "delta": privacy.delta,
            "noise_multiplier": result.noise_multiplier,
            "max_grad_norm": privacy.max_grad_norm if result.dp_phases else None,
            "sample_rate": result.sample_rate if result.dp_phases else None,
            "steps": sum(p.steps for p in result.dp_phases),
            "accountant": privacy.accountant,
            "phases": [p.to_dict() for p in result.dp_phases],
        },
        "metrics": result.utility,
        "swap_matrix": result.swap,
        "transform": transform.to_dict(),
        "train_seconds": round(result.seconds, 2),
        **(extra or {}),
    }
    write_json(run_dir / RUN_JSON, record)
    return record


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a finished run, with a clear error when it is absent."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a finished run dir: {RUN_JSON} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON: {exc}") from exc


def load_config_of_run(run_dir: str | Path) -> Config:
    """The resolved config recorded in ``run.json``."""
    return config_from_dict(read_run_json(run_dir)["config"])


def _load_weights(module: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise RunDirError(f"{path.parent} is incomplete: {path.name} is missing")
    try:
        state = load_file(str(path))
        module.load_state_dict(state)
    except (RuntimeError, OSError, MetaMorphosisError) as exc:
        raise RunDirError(f"cannot load {path}: {exc}") from exc


def load_producer(run_dir: str | Path) -> Producer:
    """The trained producer of a run dir, in eval mode on the CPU."""
    record = read_run_json(run_dir)
    config = config_from_dict(record["config"])
    input_shape = tuple(record["input_shape"])
    transform = ImageTransform.from_dict(record["transform"])
    producer = build_producer(config, build_network(config), input_shape, preprocess=transform)
    _load_weights(producer, Path(run_dir) / PRODUCER_FILE)
    return producer.eval()


def load_heads(run_dir: str | Path) -> nn.ModuleDict:
    """The consumer heads (public and private) evaluated in the run, eval mode, CPU."""
    record = read_run_json(run_dir)
    config = config_from_dict(record["config"])
    heads = build_heads(config.all_labels, build_network(config), tuple(record["input_shape"]))
    _load_weights(heads, Path(run_dir) / HEADS_FILE)
    return heads.eval()
