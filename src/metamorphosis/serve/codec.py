"""Wire codec: tensors <-> safetensors bodies (``application/vnd.safetensors``).

Why safetensors: the producer receives tensors from consumers it does not fully
trust (gradients in split learning) and consumers receive features from the
producer. Python's object serialisation (what ``torch.save`` writes) runs code
chosen by the sender while loading; safetensors is a length-prefixed JSON header
followed by raw little-endian buffers, so decoding it can only ever yield
numbers. This module therefore never deserialises Python objects from received
bytes (a test checks that no such loader is even named in this file).

Hostile input: :func:`decode_tensors` validates the header itself before handing
the bytes to safetensors (header length, JSON shape, dtypes, that every tensor's
byte range matches its shape and lies inside the body), bounds zstd
decompression by streaming with a byte budget (a zip bomb or a frame that hides
or lies about its content size cannot allocate more than ``max_bytes``), and
turns every failure into :class:`CodecError`.

Encodings (``ENCODINGS``):

* ``float32``: exact.
* ``float16``: half the bytes, ~1e-3 relative error.
* ``int8``: symmetric per-tensor quantisation ``q = round(x / scale)`` clamped to
  ``[-127, 127]`` with ``scale = max|x| / 127`` (``1.0`` for an all-zero
  tensor); the scale travels in the metadata as ``scale.<name>``. A quarter of
  the bytes, absolute error at most ``scale / 2``.

Every payload's metadata records ``encoding``. Decoding is per tensor, so a
consumer may also send a plain safetensors file (e.g. float32 without any
metadata): float32 and float16 tensors are accepted as they are, an int8 tensor
needs its ``scale.<name>``.

Error contract: every malformed or unsupported input raises :class:`CodecError`
(a :class:`~metamorphosis.errors.MetaMorphosisError`, hence a ``ValueError``)
whose message names what is wrong. The HTTP layer maps it in one place: 422 for
a well-formed body whose tensors are wrong (shape, dtype, non-finite
gradient), 400 for an undecodable body.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence

import safetensors
import torch
import zstandard
from safetensors.torch import load as _load_safetensors
from safetensors.torch import save as _save_safetensors

from metamorphosis.errors import MetaMorphosisError

__all__ = [
    "MEDIA_TYPE",
    "ENCODINGS",
    "COMPRESSIONS",
    "RESERVED_METADATA_KEYS",
    "MAX_HEADER_BYTES",
    "CodecError",
    "check_choice",
    "encode_tensors",
    "decode_tensors",
    "check_gradient",
    "encoded_size_report",
]

MEDIA_TYPE = "application/vnd.safetensors"
ENCODINGS = ("float32", "float16", "int8")
COMPRESSIONS = ("none", "zstd")

#: Metadata keys the codec writes itself; user metadata may not use them. Keys
#: starting with ``SCALE_PREFIX`` are reserved as well.
RESERVED_METADATA_KEYS = ("encoding",)
SCALE_PREFIX = "scale."

#: Largest safetensors JSON header accepted. Wire payloads hold a handful of
#: tensors (a few hundred bytes of header); the cap keeps a hostile header from
#: costing a large JSON parse.
MAX_HEADER_BYTES = 1 << 20

_ZSTD_LEVEL = 3
_READ_CHUNK = 1 << 20

# safetensors dtype tag -> (torch dtype, bytes per element). Only what the
# codec itself writes is accepted: refusing the rest (int64, bfloat16, float64,
# bool, ...) keeps the set of code paths that hostile input can reach small.
_WIRE_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "I8": (torch.int8, 1),
}

_DECODE_ERRORS = (
    safetensors.SafetensorError,
    ValueError,
    TypeError,
    RuntimeError,
    OverflowError,
    KeyError,
    RecursionError,
)


class CodecError(MetaMorphosisError):
    """A wire payload is malformed, unsupported or too large."""


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Refuse an ``encoding`` / ``compression`` not in ``allowed`` (the value cut to 20 chars)."""
    if value not in allowed:
        raise CodecError(f"{name} must be one of {', '.join(allowed)}, got {value[:20]!r}")


def _quantise_int8(name: str, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric per-tensor int8 quantisation (computed in float64 so tiny scales don't vanish)."""
    x64 = x.to(torch.float64)
    if x64.numel() and not bool(torch.isfinite(x64).all()):
        raise CodecError(
            f"tensor {name!r} has non-finite values; int8 encoding needs finite values"
        )
    amax = float(x64.abs().max()) if x64.numel() else 0.0
    scale = amax / 127.0 if amax > 0.0 else 1.0
    q = torch.round(x64 / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


def encode_tensors(
    tensors: Mapping[str, torch.Tensor],
    *,
    encoding: str = "float32",
    compression: str = "none",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise floating-point tensors to a safetensors body.

    Args:
        tensors: Name -> floating-point tensor (any device; copied to contiguous CPU).
        encoding: One of :data:`ENCODINGS`.
        compression: One of :data:`COMPRESSIONS`; ``"zstd"`` compresses the whole
            safetensors payload (level 3), worthwhile for sparse post-ReLU features.
        metadata: Extra ``str -> str`` entries (e.g. item ids). The keys in
            :data:`RESERVED_METADATA_KEYS` and those starting with ``"scale."`` are
            the codec's own and are refused.

    Returns:
        The body bytes, to be sent as :data:`MEDIA_TYPE`.

    Raises:
        CodecError: Unknown encoding / compression, a non-floating tensor, a
            reserved or non-string metadata entry, or non-finite values with int8.
    """
    check_choice("encoding", encoding, ENCODINGS)
    check_choice("compression", compression, COMPRESSIONS)
    meta: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CodecError(
                f"metadata must map str to str; got {type(key).__name__} -> {type(value).__name__}"
                f" for key {key!r}"
            )
        if key in RESERVED_METADATA_KEYS or key.startswith(SCALE_PREFIX):
            raise CodecError(
                f"metadata key {key!r} is reserved by the codec "
                f"({', '.join(RESERVED_METADATA_KEYS)}, {SCALE_PREFIX}*)"
            )
        meta[key] = value
    meta["encoding"] = encoding

    plain: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise CodecError(f"tensor names must be non-empty strings; got {name!r}")
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CodecError(f"tensor {name!r} must be a floating-point tensor; got {kind}")
        x = tensor.detach().to("cpu")
        if encoding == "float32":
            out = x.to(torch.float32)
        elif encoding == "float16":
            out = x.to(torch.float16)
        else:
            out, scale = _quantise_int8(name, x)
            meta[SCALE_PREFIX + name] = repr(scale)
        plain[name] = out.contiguous()

    payload = _save_safetensors(plain, metadata=meta)
    if compression == "zstd":
        payload = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(payload)
    return payload


def _decompress_bounded(data: bytes, max_bytes: int) -> bytes:
    """Stream-decompress zstd ``data``, giving up as soon as the output exceeds ``max_bytes``.

    Streaming never trusts the frame's declared content size, so neither a bomb
    nor a frame without (or lying about) its size can allocate more than
    ``max_bytes`` plus one read chunk.
    """
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        with reader:
            while True:
                chunk = reader.read(min(_READ_CHUNK, max_bytes - len(out) + 1))
                if not chunk:
                    break
                out += chunk
                if len(out) > max_bytes:
                    raise CodecError(
                        f"zstd body decompresses to more than max_bytes={max_bytes} bytes"
                    )
    except zstandard.ZstdError as exc:
        raise CodecError(f"body is not valid zstd data ({exc})") from exc
    if not out:
        raise CodecError("zstd body is empty or truncated (decompressed to 0 bytes)")
    return bytes(out)


def _parse_header(data: bytes) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """Validate the safetensors header; return ``(tensor entries, metadata)``."""
    if len(data) < 8:
        raise CodecError(f"body is not safetensors: {len(data)} bytes, shorter than the header")
    header_len = int.from_bytes(data[:8], "little")
    if header_len < 2 or header_len > MAX_HEADER_BYTES or header_len > len(data) - 8:
        raise CodecError(
            f"safetensors header length {header_len} is invalid for a {len(data)}-byte body "
            f"(limit {MAX_HEADER_BYTES})"
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CodecError(f"safetensors header is not valid JSON ({type(exc).__name__})") from exc
    if not isinstance(header, dict):
        raise CodecError("safetensors header must be a JSON object")

    raw_meta = header.pop("__metadata__", {})
    if not isinstance(raw_meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
    ):
        raise CodecError("safetensors __metadata__ must map str to str")

    body_len = len(data) - 8 - header_len
    entries: dict[str, dict[str, object]] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CodecError(f"tensor {name!r}: header entry must have dtype, shape, data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _WIRE_DTYPES:
            raise CodecError(
                f"tensor {name!r} has dtype {dtype!r}; allowed on the wire: "
                f"{', '.join(_WIRE_DTYPES)} (float32, float16, int8)"
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise CodecError(f"tensor {name!r} has invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise CodecError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * _WIRE_DTYPES[dtype][1]
        if not 0 <= begin <= end <= body_len or end - begin != expected:
            raise CodecError(
                f"tensor {name!r}: data_offsets {offsets} do not match shape {shape} of {dtype} "
                f"({expected} bytes) within a {body_len}-byte data section"
            )
        entries[name] = entry
    return entries, dict(raw_meta)


def _parse_scale(name: str, metadata: Mapping[str, str]) -> float:
    text = metadata.get(SCALE_PREFIX + name)
    if text is None:
        raise CodecError(f"int8 tensor {name!r} has no {SCALE_PREFIX}{name} entry in the metadata")
    try:
        scale = float(text)
    except ValueError as exc:
        raise CodecError(f"int8 tensor {name!r} has an unreadable scale {text!r}") from exc
    if not math.isfinite(scale) or scale <= 0.0:
        raise CodecError(f"int8 tensor {name!r} has scale {text!r}; must be finite and > 0")
    return scale


_SCALE_KEY = re.compile(re.escape(SCALE_PREFIX) + ".*")


def decode_tensors(
    data: bytes,
    *,
    compression: str = "none",
    max_bytes: int = 256 * 2**20,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Decode a body written by :func:`encode_tensors` (or any float32/float16 safetensors).

    Args:
        data: The received body.
        compression: How the body is compressed (one of :data:`COMPRESSIONS`); taken
            from the request (e.g. ``Content-Encoding``), never guessed.
        max_bytes: Upper bound on the (decompressed) safetensors payload.

    Returns:
        ``(tensors, metadata)``: float32 CPU tensors (int8 ones dequantised) and the
        *user* metadata only; the codec's own keys (``encoding``, ``scale.*``) are
        removed, so ``metadata`` round-trips what was given to :func:`encode_tensors`.

    Raises:
        CodecError: Unknown compression, a body over ``max_bytes``, invalid zstd,
            a truncated / garbage / inconsistent safetensors payload, a dtype
            other than float32 / float16 / int8, an unknown ``encoding`` entry, or
            an int8 tensor without a valid scale.
    """
    check_choice("compression", compression, COMPRESSIONS)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"body must be bytes; got {type(data).__name__}")
    data = bytes(data)
    if compression == "zstd":
        data = _decompress_bounded(data, max_bytes)
    elif len(data) > max_bytes:
        raise CodecError(f"body of {len(data)} bytes exceeds max_bytes={max_bytes}")

    entries, metadata = _parse_header(data)
    encoding = metadata.get("encoding")
    if encoding is not None and encoding not in ENCODINGS:
        raise CodecError(f"payload declares encoding={encoding!r}; allowed: {', '.join(ENCODINGS)}")
    scales = {
        name: _parse_scale(name, metadata)
        for name, entry in entries.items()
        if entry["dtype"] == "I8"
    }
    try:
        raw = _load_safetensors(data)
    except _DECODE_ERRORS as exc:
        raise CodecError(f"body is not a valid safetensors payload ({exc})") from exc
    if set(raw) != set(entries):  # pragma: no cover - safetensors and our parse disagree
        raise CodecError("safetensors payload does not match its header")

    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        if name in scales:
            out = (tensor.to(torch.float64) * scales[name]).to(torch.float32)
        else:
            out = tensor.to(torch.float32)
        tensors[name] = out  # safetensors copies each tensor into its own buffer
    user_meta = {
        k: v
        for k, v in metadata.items()
        if k not in RESERVED_METADATA_KEYS and not _SCALE_KEY.fullmatch(k)
    }
    return tensors, user_meta


def check_gradient(grad: torch.Tensor, *, shape: Sequence[int]) -> torch.Tensor:
    """Validate a received gradient before it reaches ``backward``.

    A wrong shape would broadcast or fail deep inside autograd, and a NaN / inf
    would poison the producer's weights (and, with DP, break the clipping
    argument), so both are refused at the boundary.

    Args:
        grad: The decoded tensor.
        shape: The exact expected shape (that of the features sent for the step).

    Returns:
        ``grad`` as float32.

    Raises:
        CodecError: Not a float32 / float16 tensor, a different shape, or non-finite values.
    """
    expected = tuple(int(d) for d in shape)
    if not isinstance(grad, torch.Tensor):
        raise CodecError(f"gradient must be a tensor; got {type(grad).__name__}")
    if grad.dtype not in (torch.float32, torch.float16):
        raise CodecError(f"gradient dtype must be float32 or float16; got {grad.dtype}")
    if tuple(grad.shape) != expected:
        raise CodecError(f"gradient shape must be {list(expected)}; got {list(grad.shape)}")
    if grad.numel() and not bool(torch.isfinite(grad).all()):
        bad = int((~torch.isfinite(grad)).sum())
        raise CodecError(f"gradient has {bad} non-finite value(s) (NaN or inf)")
    return grad.to(torch.float32)


def encoded_size_report(tensor: torch.Tensor) -> dict[str, int]:
    """Body size in bytes of ``tensor`` for every encoding and compression.

    Keys are ``"<encoding>"`` and ``"<encoding>+zstd"`` (e.g. ``"float16+zstd"``),
    in :data:`ENCODINGS` order; used for the size table in the docs.
    """
    report: dict[str, int] = {}
    for encoding in ENCODINGS:
        for compression in COMPRESSIONS:
            key = encoding if compression == "none" else f"{encoding}+{compression}"
            body = encode_tensors({"x": tensor}, encoding=encoding, compression=compression)
            report[key] = len(body)
    return report
