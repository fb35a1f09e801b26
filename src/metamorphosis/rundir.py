"""The run directory (CONTRACT in DESIGN.md): writing it and reading it back.

``audit`` and ``serve`` read only the run dir, so everything needed to
rebuild the producer (resolved config with class counts, input shape and the
preprocessing transform) lives in ``run.json`` next to the weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from .config import PRIVACY_MODES, Config, config_from_dict, config_to_dict, is_finite_number
from .data.transforms import ImageTransform
from .errors import ConfigError, MetaMorphosisError, RunDirError
from .io import atomic_write, json_safe, save_safetensors, write_json
from .models.producer import Producer, build_heads, build_network, build_producer
from .models.release import SECRET_BYTES
from .privacy.fisher import has_bound, set_release_sigmas
from .privacy.scope import privacy_scope

if TYPE_CHECKING:  # loading a run must not import the trainer (and with it Opacus)
    from .train.loop import TrainResult

__all__ = [
    "RUN_FORMAT_VERSION",
    "write_run",
    "read_run_json",
    "load_config_of_run",
    "load_producer",
    "load_heads",
    "read_weights",
    "json_safe",
]

RUN_FORMAT_VERSION = 1
RUN_JSON = "run.json"
PRODUCER_FILE = "producer.safetensors"
HEADS_FILE = "heads.safetensors"
#: The key of the keyed release noise (hex), beside the weights and readable by the
#: owner only; never in run.json, which is shared with every consumer.
RELEASE_KEY_FILE = "release.key"


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
    _check_trained_weights(config, producer, heads)
    save_safetensors(run_dir / PRODUCER_FILE, producer.state_dict(), {"format": "metamorphosis"})
    save_safetensors(run_dir / HEADS_FILE, heads.state_dict(), {"format": "metamorphosis"})
    if producer.secret is not None:
        _write_release_key(run_dir / RELEASE_KEY_FILE, producer.secret)
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
            "private_heads": privacy.private_heads,
            "remote_heads": result.remote_heads,
            "scope": privacy_scope(
                dp=bool(result.dp_phases),
                private_heads=privacy.private_heads,
                noisy_release=all(has_bound(producer, t) for t in producer.tasks),
                remote_heads=result.remote_heads,
            ),
        },
        # a metric can be NaN (e.g. on a class absent from the test split): null in strict JSON
        "metrics": json_safe(result.utility),
        "swap_matrix": json_safe(result.swap),
        "transform": transform.to_dict(),
        "defence": config_to_dict(config)["defence"],
        "release": release_record(producer, result.erased, result.dfil),
        "release_total": result.dfil_total,
        "train_seconds": round(result.seconds, 2),
        **(extra or {}),
    }
    write_json(run_dir / RUN_JSON, record)
    return record


def release_record(
    producer: Producer,
    erased: Mapping[str, list[str]],
    dfil: Mapping[str, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """``run.json``'s ``release``: per public task, the release noise's standard deviation
    added to the code (calibrated, under ``release`` targets), the bottleneck's channels,
    code size and channel (``vib``: its learnt posterior noise comes on top of sigma), the
    private attributes erased from it, and its dFIL statistics on the training images
    the noise was calibrated on (None: released without noise)."""
    record = {}
    for task in producer.tasks:
        release = producer.release_of(task) if task in producer.releases else None
        bottleneck = None if release is None or release.bottleneck is None else release.bottleneck
        record[task] = {
            "sigma": release.noise if release is not None else 0.0,
            "bottleneck_channels": bottleneck.mean.out_channels if bottleneck else None,
            "code_size": bottleneck.code_size if bottleneck else None,
            "channel": None if bottleneck is None else bottleneck.channel,
            "erased": list(erased.get(task, [])),
            "dfil": json_safe((dfil or {}).get(task)),
        }
    return record


def _write_release_key(path: Path, secret: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(secret.hex() + "\n", encoding="ascii"))
    path.chmod(0o600)


def _read_release_key(run_dir: Path) -> bytes | None:
    path = run_dir / RELEASE_KEY_FILE
    if not path.exists():
        return None
    try:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"cannot read {path}: {_one_line(exc)}") from exc
    if len(secret) != SECRET_BYTES:  # a short key would make the noise guessable
        raise RunDirError(
            f"{path} holds a {len(secret)}-byte key; a release key has {SECRET_BYTES} bytes"
        )
    return secret


def _non_finite(state: Mapping[str, Tensor]) -> list[str]:
    return [
        k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _check_trained_weights(config: Config, producer: nn.Module, heads: nn.Module) -> None:
    """Refuse to write a run whose training diverged: its features would all be NaN."""
    bad = _non_finite(producer.state_dict()) + _non_finite(heads.state_dict())
    if bad:
        raise ConfigError(
            f"training diverged: {len(bad)} weight tensors are NaN or infinite "
            f"(first: {bad[0]}); lower train.lr (now {config.train.lr:g}) or the loss weights "
            f"(privacy.omega={config.privacy.omega:g}, each task's weight) and start again "
            "in a new run dir (its checkpoint holds the diverged weights)"
        )


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a finished run, checked: a clear error names what is missing or wrong.

    Every reader (``load_producer``, ``audit``, ``serve``, ``add-task``) goes through here,
    so a record they index into always has the keys and types of CONTRACT: run dir and a
    valid config. That the record agrees with its config and weights is checked where
    the weights are loaded (:func:`load_producer`, :func:`load_heads`).
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if not path.is_file():
        where = ""
        if not run_dir.is_dir():
            where = " (it is a file)" if run_dir.exists() else " (no such folder)"
        raise RunDirError(f"{run_dir} is not a finished run dir{where}: {RUN_JSON} is missing")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunDirError(f"{path} is not valid JSON: {_one_line(exc)}") from exc
    _check_record(record, path)
    return record


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _require(ok: bool, path: Path, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise RunDirError(f"{path}: {key}={_short(value)} is invalid: expected {allowed}")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_int(v, 1) for v in value)


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_REQUIRED = (
    "version",
    "config",
    "tasks",
    "private_attributes",
    "input_shape",
    "feature_shapes",
    "privacy",
    "metrics",
    "transform",
)


def _check_record(record: Any, path: Path) -> None:
    """The keys and types every reader relies on, and a config that validates."""
    if not isinstance(record, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise RunDirError(f"{path}: key {missing[0]!r} is missing")
    version = record["version"]
    ok = _is_int(version, 0) and version == RUN_FORMAT_VERSION
    _require(ok, path, "version", version, f"{RUN_FORMAT_VERSION} (this install's run format)")
    _require(isinstance(record["config"], dict), path, "config", record["config"], "an object")
    try:
        config_from_dict(record["config"])
    except ConfigError as exc:
        raise RunDirError(f"{path}: config: {exc}") from exc
    for key in ("tasks", "private_attributes"):
        _require(_is_names(record[key]), path, key, record[key], "a list of names")
    _check_shapes(record, path)
    _check_privacy(record["privacy"], path)
    _require(isinstance(record["metrics"], dict), path, "metrics", record["metrics"], "an object")
    swap = record.get("swap_matrix")
    _require(swap is None or isinstance(swap, dict), path, "swap_matrix", swap, "an object")
    added = record.get("added_tasks", [])
    _require(isinstance(added, list), path, "added_tasks", added, "a list")
    seconds = record.get("train_seconds", 0.0)
    _require(is_finite_number(seconds), path, "train_seconds", seconds, "a finite number")
    _check_transform(record, path)


def _check_agreement(record: dict[str, Any], config: Config, path: Path) -> None:
    """The record's names and input shape are those its config gives (checked when weights
    are loaded, after the data: an audit with a wrong --data-root reports that first)."""
    for key, specs in (("tasks", config.tasks), ("private_attributes", config.private_attributes)):
        names = [spec.name for spec in specs]
        if record[key] != names:
            raise RunDirError(
                f"{path}: {key}={_short(record[key])} disagrees with config.{key} {names}"
            )
    shape = record["input_shape"]
    expected = [3, *config.data.image_size]
    _require(shape == expected, path, "input_shape", shape, f"{expected} (3 × data.image_size)")
    mode = record["privacy"]["mode"]
    expected_mode = config.privacy.mode
    _require(mode == expected_mode, path, "privacy.mode", mode, f"{expected_mode!r} (config)")


def _check_shapes(record: dict[str, Any], path: Path) -> None:
    shape = record["input_shape"]
    _require(_is_shape(shape), path, "input_shape", shape, "[C, H, W] of integers > 0")
    shapes = record["feature_shapes"]
    tasks = record["tasks"]
    ok = isinstance(shapes, dict) and sorted(shapes) == sorted(tasks)
    _require(ok, path, "feature_shapes", shapes, f"an object with a shape per task of {tasks}")
    for task, feature in shapes.items():
        _require(_is_shape(feature), path, f"feature_shapes.{task}", feature, "[C, H, W] > 0")


def _check_privacy(privacy: Any, path: Path) -> None:
    _require(isinstance(privacy, dict), path, "privacy", privacy, "an object")
    mode = privacy.get("mode")
    _require(mode in PRIVACY_MODES, path, "privacy.mode", mode, f"one of {list(PRIVACY_MODES)}")
    for key in ("epsilon", "noise_multiplier"):
        value = privacy.get(key)
        ok = value is None or (is_finite_number(value) and value > 0)
        _require(ok, path, f"privacy.{key}", value, "a finite number > 0 or null")
    delta = privacy.get("delta")
    ok = is_finite_number(delta) and 0 < delta < 1
    _require(ok, path, "privacy.delta", delta, "a number in (0, 1)")
    phases = privacy.get("phases")
    _require(isinstance(phases, list), path, "privacy.phases", phases, "a list")
    for i, phase in enumerate(phases):
        _check_phase(phase, f"privacy.phases[{i}]", path)


def _check_phase(phase: Any, key: str, path: Path) -> None:
    allowed = "{name, noise_multiplier > 0, sample_rate in (0, 1], steps >= 0}"
    ok = (
        isinstance(phase, dict)
        and set(phase) == {"name", "noise_multiplier", "sample_rate", "steps"}
        and isinstance(phase["name"], str)
        and is_finite_number(phase["noise_multiplier"])
        and phase["noise_multiplier"] > 0
        and is_finite_number(phase["sample_rate"])
        and 0 < phase["sample_rate"] <= 1
        and _is_int(phase["steps"], 0)
    )
    _require(ok, path, key, phase, allowed)


def _check_transform(record: dict[str, Any], path: Path) -> None:
    raw = record["transform"]
    try:
        transform = ImageTransform.from_dict(raw)
    except (MetaMorphosisError, TypeError) as exc:
        raise RunDirError(f"{path}: transform: {_one_line(exc)}") from exc
    finite = math.isfinite(transform.mean) and math.isfinite(transform.std)
    _require(finite, path, "transform", raw, "a finite mean and std")
    shape = record["input_shape"]
    if [3, *transform.image_size] != shape:
        raise RunDirError(
            f"{path}: transform.image_size={list(transform.image_size)} disagrees with "
            f"input_shape={shape}"
        )


def load_config_of_run(run_dir: str | Path) -> Config:
    """The resolved config recorded in ``run.json``."""
    return config_from_dict(read_run_json(run_dir)["config"])


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a run's safetensors file; any damage is a :class:`RunDirError`.

    A truncated, empty or hand-edited file makes safetensors raise its own error
    type (not an ``OSError``); NaN / inf weights would publish NaN features.
    """
    if not path.is_file():
        what = "is not a file" if path.exists() else "is missing"
        raise RunDirError(f"{path.parent} is incomplete: {path.name} {what}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, MemoryError, OverflowError) as exc:
        raise RunDirError(f"cannot read {path}: {_one_line(exc)}") from exc
    bad = _non_finite(state)
    if bad:
        raise RunDirError(
            f"{path} holds NaN or infinite weights in {len(bad)} tensor(s), e.g. {bad[0]}"
        )
    return state


def _load_weights(module: nn.Module, path: Path) -> None:
    """``path`` into ``module``, every key present with its shape, or one clear error."""
    state = read_weights(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RunDirError(
            f"{path} does not match run.json's config: {len(missing)} missing "
            f"{missing[:2]}, {len(unexpected)} unexpected {unexpected[:2]}"
        )
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        key = wrong[0]
        raise RunDirError(
            f"{path}: {key} has shape {list(state[key].shape)} but run.json's config "
            f"gives {list(expected[key].shape)}"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # e.g. a complex dtype that cannot be copied into a float
        raise RunDirError(f"cannot load {path}: {_one_line(exc)}") from exc


def _build(record: dict[str, Any], path: Path, make: Any) -> Any:
    """A model from the record's config; a config this install cannot build is the run's fault."""
    config = config_from_dict(record["config"])
    _check_agreement(record, config, path)
    try:
        return make(config)
    except ConfigError as exc:
        raise RunDirError(f"{path}: config: {exc}") from exc


def load_producer(run_dir: str | Path) -> Producer:
    """The trained producer of a run dir, in eval mode on the CPU.

    Besides the checks of :func:`read_run_json`, the weights must fit the config
    and give the recorded ``feature_shapes``.
    """
    record = read_run_json(run_dir)
    input_shape = tuple(record["input_shape"])
    transform = ImageTransform.from_dict(record["transform"])
    path = Path(run_dir) / RUN_JSON
    producer = _build(
        record,
        path,
        lambda c: build_producer(c, build_network(c), input_shape, preprocess=transform),
    )
    _load_weights(producer, Path(run_dir) / PRODUCER_FILE)
    _set_release_noise(producer, record, path)
    producer.secret = _read_release_key(Path(run_dir))
    if producer.secret is None and any(r.noisy for r in producer.releases.values()):
        raise RunDirError(
            f"{run_dir} releases keyed noise but its {RELEASE_KEY_FILE} is missing: "
            "without it no feature can be released"
        )
    producer.eval()
    _check_feature_shapes(producer, record, path)
    return producer


def _set_release_noise(producer: Producer, record: dict[str, Any], path: Path) -> None:
    """Each public task's release noise as trained: ``release[T].sigma`` (calibrated by
    the trainer under ``release`` targets, so the config's ``defence.noise`` need not be
    it; records before calibration existed hold ``defence.noise`` there)."""
    releases = record.get("release")
    if not isinstance(releases, dict):
        return
    sigmas = {}
    for task in producer.tasks:
        entry = releases.get(task)
        if task not in producer.releases or not isinstance(entry, dict):
            continue
        sigma: Any = entry.get("sigma")
        ok = is_finite_number(sigma) and sigma >= 0
        _require(ok, path, f"release.{task}.sigma", sigma, "a finite number >= 0")
        sigmas[task] = sigma
    set_release_sigmas(producer, sigmas)


def _check_feature_shapes(producer: Producer, record: dict[str, Any], path: Path) -> None:
    with torch.no_grad():
        features = producer(torch.zeros(1, *producer.input_shape))
    shapes = {name: list(f.shape[1:]) for name, f in features.items()}
    if shapes != record["feature_shapes"]:
        raise RunDirError(
            f"{path}: feature_shapes={_short(record['feature_shapes'])} disagree with the "
            f"weights, which give {_short(shapes)}"
        )


def load_heads(run_dir: str | Path) -> nn.ModuleDict:
    """The consumer heads (public and private) evaluated in the run, eval mode, CPU."""
    record = read_run_json(run_dir)
    input_shape = tuple(record["input_shape"])
    heads = _build(
        record,
        Path(run_dir) / RUN_JSON,
        lambda c: build_heads(
            c.all_labels, build_network(c), input_shape, code_size=c.defence.code_size
        ),
    )
    _load_weights(heads, Path(run_dir) / HEADS_FILE)
    return heads.eval()
