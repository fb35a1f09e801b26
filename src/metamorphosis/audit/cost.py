"""What the producer costs to store, run and publish (paper Tables 9–10).

MetaMorphosis asks a resource-constrained producer to run a shared encoder and
one small module per task, then publish each public task's features. The audit
reports what that costs on the machine it runs on: parameter counts and sizes
of the encoder, every module and every consumer head, the size of one image's
published features, and per-image latencies of the encoder and of each module
on top of a precomputed encoder output. The device, thread count and timing
protocol go into the result so the numbers are read for what they are.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.producer import Producer, count_parameters
from ..rundir import load_producer
from .attacks.base import Attack, AuditContext
from .document import Document

__all__ = [
    "BYTES_PER_KB",
    "BYTES_PER_MB",
    "ProducerCost",
    "format_cost_table",
    "module_size",
    "producer_cost",
]

BYTES_PER_MB = 1_000_000
"""``size_mb`` keys are decimal megabytes (10^6 bytes)."""

BYTES_PER_KB = 1_000
"""``size_kb`` keys are decimal kilobytes (10^3 bytes)."""

_FLOAT32_BYTES = 4  # published features are float32


def module_size(module: nn.Module) -> dict[str, Any]:
    """Parameter count and storage of ``module`` (parameters + buffers, as stored).

    Buffers (BatchNorm running statistics) are part of what a device must hold
    to run the model, so they count towards the size but not the parameters.
    """
    parameter_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in module.buffers())
    total = parameter_bytes + buffer_bytes
    return {
        "parameters": count_parameters(module),
        "bytes": total,
        "size_mb": total / BYTES_PER_MB,
    }


def _feature_entry(shape: torch.Size) -> dict[str, Any]:
    """Shape and float32 size of one image's features (``shape`` is N-first)."""
    per_image = list(shape[1:])
    elements = 1
    for side in per_image:
        elements *= int(side)
    return {"shape": per_image, "size_kb": elements * _FLOAT32_BYTES / BYTES_PER_KB}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms_per_image(
    fn: Callable[[], Tensor],
    *,
    repeats: int,
    warmup: int,
    batch_size: int,
    device: torch.device,
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup``, per image."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _synchronise(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _synchronise(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0 / batch_size


def _device_name(device: torch.device) -> str:
    """A human-readable name of the processor the timings ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _role(producer: Producer, name: str) -> str:
    if name in producer.tasks:
        return "public"
    if name in producer.private_attributes:
        return "private"
    return "unused"


def _check_protocol(repeats: int, warmup: int, batch_size: int) -> None:
    for key, value, minimum in (
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{key}={value!r} is invalid: expected an integer >= {minimum}")


def _on_device(producer: Producer, device: torch.device) -> Producer:
    """``producer`` itself if it already lives on ``device``, else a copy there."""
    param = next(producer.parameters(), None)
    if param is None or param.device == device:
        return producer
    return copy.deepcopy(producer).to(device)


def producer_cost(
    producer: Producer,
    heads: Mapping[str, nn.Module] | None = None,
    *,
    repeats: int = 20,
    warmup: int = 3,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Sizes, published-feature sizes and per-image latencies of a producer.

    Latencies are the median over ``repeats`` timed runs (after ``warmup``
    untimed ones) of one batch of ``batch_size`` random inputs, divided by
    ``batch_size``, in eval mode under ``torch.inference_mode``. A module's
    latency is measured on a precomputed encoder output, so the cost of
    publishing k tasks is ``encoder + sum of k modules``; ``publish_latency_ms``
    times that directly (the encoder once, then every public module).

    Args:
        producer: the producer; its train/eval mode is restored afterwards, and
            it is copied (not moved) when it lives on another device.
        heads: consumer heads by label name, whose sizes are listed (not timed).
        repeats: timed runs per component.
        warmup: untimed runs before timing (allocator, kernels, caches).
        batch_size: images per timed run.
        device: where to time.

    Returns:
        ``{"encoder": {parameters, bytes, size_mb, latency_ms, feature_shape,
        feature_kb}, "modules": {name: {role, parameters, bytes, size_mb,
        latency_ms}}, "heads": {name: {parameters, bytes, size_mb}},
        "features": {public task: {shape, size_kb}}, "producer": {parameters,
        bytes, size_mb, publish_latency_ms}, "timing": {device, device_name,
        torch_threads, batch_size, repeats, warmup, statistic}, "units": {...}}``.
    """
    _check_protocol(repeats, warmup, batch_size)
    device = torch.device(device)
    model = _on_device(producer, device)
    was_training = model.training
    model.eval()
    try:
        images = torch.randn(batch_size, *model.input_shape, device=device)

        def time_it(run: Callable[[], Tensor]) -> float:
            return _median_ms_per_image(
                run, repeats=repeats, warmup=warmup, batch_size=batch_size, device=device
            )

        with torch.inference_mode():
            shared = model.encode(images)
            published = model(images)
        encoder = {
            **module_size(model.encoder),
            "latency_ms": time_it(lambda: model.encode(images)),
            "feature_shape": list(shared.shape[1:]),
            "feature_kb": _feature_entry(shared.shape)["size_kb"],
        }
        modules = {
            name: {
                "role": _role(model, name),
                **module_size(module),
                "latency_ms": time_it(partial(module, shared)),
            }
            for name, module in model.task_modules.items()
        }
        whole = {
            **module_size(model),
            "publish_latency_ms": time_it(lambda: model(images)),
        }
    finally:
        model.train(was_training)
    return {
        "encoder": encoder,
        "modules": modules,
        "heads": {name: module_size(head) for name, head in (heads or {}).items()},
        "features": {name: _feature_entry(value.shape) for name, value in published.items()},
        "producer": whole,
        "timing": {
            "device": str(device),
            "device_name": _device_name(device),
            "torch_threads": torch.get_num_threads(),
            "batch_size": batch_size,
            "repeats": repeats,
            "warmup": warmup,
            "statistic": "median wall time per image (time.perf_counter), inference_mode, eval",
        },
        "units": {"size_mb": "10^6 bytes", "size_kb": "10^3 bytes", "latency_ms": "ms/image"},
    }


def _mb(value: float) -> str:
    """Sizes from a few hundred bytes (modules) to hundreds of MB (encoders), readably."""
    return f"{value:.3f}" if value >= 0.1 else f"{value:.3g}"


def _shape(shape: list[int] | None) -> str:
    return "×".join(map(str, shape)) if shape else "–"


def format_cost_table(cost: Mapping[str, Any]) -> str:
    """A markdown table of :func:`producer_cost`'s result, with the timing protocol below it.

    Module latencies exclude the encoder; the last row is the whole producer
    and the cost of publishing every public task's features for one image.
    """
    features = cost["features"]
    enc = cost["encoder"]
    rows = [
        "| Component | Role | Parameters | Size (MB) | Latency (ms/image) "
        "| Output shape | Output (KB/image) |",
        "|---|---|---:|---:|---:|---|---:|",
        f"| encoder | shared | {enc['parameters']:,} | {_mb(enc['size_mb'])} "
        f"| {enc['latency_ms']:.3f} | {_shape(enc['feature_shape'])} | {enc['feature_kb']:.2f} |",
    ]
    for name, entry in cost["modules"].items():
        feature = features.get(name)
        kb = f"{feature['size_kb']:.2f}" if feature else "–"
        rows.append(
            f"| module `{name}` | {entry['role']} | {entry['parameters']:,} "
            f"| {_mb(entry['size_mb'])} | {entry['latency_ms']:.3f} "
            f"| {_shape(feature['shape'] if feature else None)} | {kb} |"
        )
    for name, entry in cost["heads"].items():
        rows.append(
            f"| head `{name}` | consumer | {entry['parameters']:,} | {_mb(entry['size_mb'])} "
            "| – | – | – |"
        )
    whole = cost["producer"]
    published_kb = sum(f["size_kb"] for f in features.values())
    rows.append(
        f"| producer (all modules) | publishes {len(features)} task(s) | {whole['parameters']:,} "
        f"| {_mb(whole['size_mb'])} | {whole['publish_latency_ms']:.3f} | – "
        f"| {published_kb:.2f} |"
    )
    timing = cost["timing"]
    note = (
        f"Latency: median of {timing['repeats']} runs after {timing['warmup']} warm-up, "
        f"batch {timing['batch_size']}, per image, on {timing['device']} "
        f"({timing['device_name']}), {timing['torch_threads']} torch thread(s). Module "
        "latencies exclude the encoder; the producer row is the encoder plus every public "
        "module. Output sizes are float32; MB = 10^6 bytes, KB = 10^3 bytes."
    )
    return "\n".join([*rows, "", note]) + "\n"


class ProducerCost(Attack):
    """``cost`` of the report: no attack, but reported the same way."""

    name = "cost"
    stage = "producer cost"
    assumes = (
        "Not an attack: sizes and per-image latencies of the producer's parts on the machine "
        "that ran the audit (median of repeated timed runs after warm-up)."
    )

    def measure(self, context: AuditContext, report: Mapping[str, Any]) -> dict[str, Any]:
        return {"cost": producer_cost(load_producer(context.run_dir), context.heads)}

    def section(self, doc: Document, report: Mapping[str, Any]) -> None:
        doc.heading("Producer cost")
        doc.paragraph(format_cost_table(report["cost"]))
