"""The wire codec: round trips, sizes, and refusal of hostile or malformed bodies."""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from metamorphosis.errors import MetaMorphosisError
from metamorphosis.serve import codec
from metamorphosis.serve.codec import (
    COMPRESSIONS,
    ENCODINGS,
    MEDIA_TYPE,
    CodecError,
    check_gradient,
    decode_tensors,
    encode_tensors,
    encoded_size_report,
)

FEW = settings(max_examples=25, deadline=None)


def features(seed: int = 0, shape: tuple[int, ...] = (2, 8, 4, 4)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def raw_safetensors(header: dict, body: bytes = b"") -> bytes:
    """A hand-made safetensors payload (to put things the encoder never writes on the wire)."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def test_constants_and_error_family():
    assert MEDIA_TYPE == "application/vnd.safetensors"
    assert ENCODINGS == ("float32", "float16", "int8")
    assert COMPRESSIONS == ("none", "zstd")
    assert issubclass(CodecError, MetaMorphosisError)
    assert issubclass(CodecError, ValueError)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_float32_round_trip_is_exact(compression):
    x, y = features(0), features(1, (3, 5))
    body = encode_tensors({"features": x, "other": y}, compression=compression)
    out, meta = decode_tensors(body, compression=compression)
    assert set(out) == {"features", "other"}
    assert out["features"].dtype == torch.float32
    assert torch.equal(out["features"], x)
    assert torch.equal(out["other"], y)
    assert meta == {}


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_float16_round_trip_within_1e3_relative(compression):
    x = features(2) * 10
    body = encode_tensors({"f": x}, encoding="float16", compression=compression)
    out, _ = decode_tensors(body, compression=compression)
    assert out["f"].dtype == torch.float32
    torch.testing.assert_close(out["f"], x, rtol=1e-3, atol=1e-6)
    assert len(body) < len(encode_tensors({"f": x}, compression=compression))


def test_int8_round_trip_within_half_a_step():
    x = features(3) * 4
    body = encode_tensors({"f": x}, encoding="int8")
    out, meta = decode_tensors(body)
    scale = float(x.abs().max()) / 127
    assert out["f"].dtype == torch.float32
    assert float((out["f"] - x).abs().max()) <= scale / 2 * (1 + 1e-5)
    assert meta == {}  # the scale is the codec's own metadata


@FEW
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    magnitude=st.floats(1e-30, 1e30),
    seed=st.integers(0, 2**16),
)
def test_int8_error_bound_over_shapes_and_magnitudes(shape, magnitude, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * magnitude
    out, _ = decode_tensors(encode_tensors({"x": x}, encoding="int8"))
    assert out["x"].shape == x.shape
    if x.numel():
        scale = float(x.double().abs().max()) / 127
        err = float((out["x"].double() - x.double()).abs().max())
        # scale / 2 from rounding, plus float32 rounding of the dequantised value.
        assert err <= scale / 2 * (1 + 1e-5) + float(x.abs().max()) * 1e-6


def test_int8_all_zero_tensor_uses_scale_one():
    body = encode_tensors({"z": torch.zeros(3, 4)}, encoding="int8")
    header_len = struct.unpack("<Q", body[:8])[0]
    header = json.loads(body[8 : 8 + header_len])
    assert header["__metadata__"]["scale.z"] == "1.0"
    assert header["__metadata__"]["encoding"] == "int8"
    out, _ = decode_tensors(body)
    assert torch.equal(out["z"], torch.zeros(3, 4))


def test_int8_refuses_non_finite_values():
    x = features(4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(CodecError, match="non-finite"):
        encode_tensors({"f": x}, encoding="int8")


def test_zstd_is_smaller_on_a_compressible_tensor():
    x = torch.relu(features(5, (4, 64, 8, 8)))
    x[:, 32:] = 0  # post-ReLU feature maps are sparse
    plain = encode_tensors({"f": x})
    packed = encode_tensors({"f": x}, compression="zstd")
    assert len(packed) < 0.8 * len(plain)
    out, _ = decode_tensors(packed, compression="zstd")
    assert torch.equal(out["f"], x)


def test_metadata_round_trips_and_reserved_keys_are_refused():
    meta = {"ids": "a,b,c", "task": "smile"}
    for encoding in ENCODINGS:
        _, got = decode_tensors(
            encode_tensors({"f": features(6)}, encoding=encoding, metadata=meta)
        )
        assert got == meta
    for key in ("encoding", "scale.f"):
        with pytest.raises(CodecError, match="reserved"):
            encode_tensors({"f": features(6)}, metadata={key: "x"})
    with pytest.raises(CodecError, match="str to str"):
        encode_tensors({"f": features(6)}, metadata={"n": 3})  # type: ignore[dict-item]


def test_unknown_encoding_or_compression_lists_the_allowed_values():
    with pytest.raises(CodecError, match="float32, float16, int8"):
        encode_tensors({"f": features()}, encoding="bf16")
    with pytest.raises(CodecError, match="none, zstd"):
        encode_tensors({"f": features()}, compression="gzip")
    with pytest.raises(CodecError, match="none, zstd"):
        decode_tensors(encode_tensors({"f": features()}), compression="gzip")


def test_encode_refuses_non_floating_tensors():
    with pytest.raises(CodecError, match="floating-point"):
        encode_tensors({"i": torch.arange(4)})


def test_encode_accepts_non_contiguous_and_float64_inputs():
    x = features(7, (4, 6)).t()
    out, _ = decode_tensors(encode_tensors({"x": x.double()}))
    assert torch.equal(out["x"], x)


@pytest.mark.parametrize(
    "body",
    [b"", b"garbage", b"\x00" * 64, b"hello world, definitely not safetensors" * 10],
)
def test_garbage_bytes_raise_codec_error(body):
    with pytest.raises(CodecError):
        decode_tensors(body)
    with pytest.raises(CodecError):
        decode_tensors(body, compression="zstd")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_truncated_payload_raises_codec_error(compression):
    body = encode_tensors({"f": features(8)}, compression=compression)
    for cut in (1, 7, len(body) // 2, len(body) - 9):
        with pytest.raises(CodecError):
            decode_tensors(body[:cut], compression=compression)
    with pytest.raises(CodecError):
        decode_tensors(body[:-1], compression=compression)


def test_wrong_compression_flag_raises_codec_error():
    plain = encode_tensors({"f": features(9)})
    packed = encode_tensors({"f": features(9)}, compression="zstd")
    with pytest.raises(CodecError):
        decode_tensors(plain, compression="zstd")
    with pytest.raises(CodecError):
        decode_tensors(packed, compression="none")


def test_trailing_garbage_after_zstd_frame_raises():
    packed = encode_tensors({"f": features(9)}, compression="zstd")
    with pytest.raises(CodecError):
        decode_tensors(packed + b"trailing junk", compression="zstd")


def _stream_compress_zeros(total: int, *, declare_size: bool) -> bytes:
    """zstd of ``total`` zero bytes, compressed chunk by chunk (never holding ``total`` bytes)."""
    sink = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=1)
    size = total if declare_size else -1
    with cctx.stream_writer(sink, size=size, closefd=False) as writer:
        chunk = bytes(1 << 20)
        for _ in range(total // len(chunk)):
            writer.write(chunk)
    return sink.getvalue()


@pytest.mark.parametrize("declare_size", [False, True])
def test_zstd_bomb_is_stopped_at_max_bytes(declare_size):
    bomb = _stream_compress_zeros(300 * 2**20, declare_size=declare_size)
    assert len(bomb) < 2**20  # a tiny body...
    header = zstandard.get_frame_parameters(bomb)
    assert header.content_size == (300 * 2**20 if declare_size else zstandard.CONTENTSIZE_UNKNOWN)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CodecError, match="max_bytes"):
            decode_tensors(bomb, compression="zstd", max_bytes=2**20)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ...that expands to 300 MB must be refused fast and without holding much of it.
    assert elapsed < 2.0
    assert peak < 16 * 2**20


def test_frame_lying_about_its_content_size_is_bounded():
    # A hand-made frame whose header claims 2**40 bytes of content but holds one
    # 64-byte raw block: a one-shot decoder that trusts the header tries to
    # allocate a terabyte (MemoryError); the codec must stream and refuse it.
    frame = (
        bytes.fromhex("28b52ffd")  # magic
        + bytes([0xC0, 0x00])  # 8-byte content size, window descriptor
        + struct.pack("<Q", 2**40)
        + (1 | (64 << 3)).to_bytes(3, "little")  # last block, raw, 64 bytes
        + b"x" * 64
    )
    assert zstandard.get_frame_parameters(frame).content_size == 2**40
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_tensors(frame, compression="zstd", max_bytes=2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_uncompressed_body_over_max_bytes_is_refused():
    body = encode_tensors({"f": features(10)})
    with pytest.raises(CodecError, match="max_bytes"):
        decode_tensors(body, max_bytes=len(body) - 1)
    decode_tensors(body, max_bytes=len(body))


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(6, dtype=torch.int64),
        torch.ones(2, 3, dtype=torch.bfloat16),
        torch.ones(3).double(),
    ],
    ids=["int64", "bfloat16", "float64"],
)
def test_payload_with_unsupported_dtype_is_refused(tensor):
    body = st_save({"features": features(11), "bad": tensor}, metadata={"encoding": "float32"})
    with pytest.raises(CodecError, match="dtype"):
        decode_tensors(body)


def test_plain_safetensors_without_codec_metadata_is_accepted():
    # A consumer may send a gradient written with safetensors directly.
    grad = features(12)
    out, meta = decode_tensors(st_save({"grad": grad.half()}))
    assert meta == {}
    torch.testing.assert_close(out["grad"], grad, rtol=1e-3, atol=1e-6)


def test_int8_without_a_valid_scale_is_refused():
    q = torch.ones(4, dtype=torch.int8)
    with pytest.raises(CodecError, match="scale.q"):
        decode_tensors(st_save({"q": q}, metadata={"encoding": "int8"}))
    for bad in ("nan", "inf", "0", "-1.0", "abc"):
        with pytest.raises(CodecError, match="scale"):
            decode_tensors(st_save({"q": q}, metadata={"encoding": "int8", "scale.q": bad}))


def test_unknown_declared_encoding_is_refused():
    with pytest.raises(CodecError, match="encoding"):
        decode_tensors(st_save({"f": features()}, metadata={"encoding": "float8"}))


def test_header_claiming_absurd_sizes_is_refused():
    body = encode_tensors({"f": features(13)})
    for header_len in (2**63, 2**40, len(body)):
        with pytest.raises(CodecError, match="header length"):
            decode_tensors(struct.pack("<Q", header_len) + body[8:])
    huge = {"f": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}
    with pytest.raises(CodecError, match="data_offsets"):
        decode_tensors(raw_safetensors(huge, bytes(16)))
    beyond = {"f": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}
    with pytest.raises(CodecError, match="data_offsets"):
        decode_tensors(raw_safetensors(beyond, bytes(16)))
    negative = {"f": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}
    with pytest.raises(CodecError, match="shape"):
        decode_tensors(raw_safetensors(negative, bytes(16)))


@pytest.mark.parametrize(
    "header_text",
    [
        b"[" * 100_000,
        b"[1, 2]",
        b'{"__metadata__": {"a": 1}}',
        b'{"f": {"dtype": "F32"}}',
        b"\xff\xfe",
    ],
    ids=["deep-nesting", "not-an-object", "bad-metadata", "missing-fields", "not-utf8"],
)
def test_malformed_headers_are_refused(header_text):
    body = struct.pack("<Q", len(header_text)) + header_text
    with pytest.raises(CodecError):
        decode_tensors(body)


def test_check_gradient():
    shape = (2, 8, 4, 4)
    good = features(14, shape)
    out = check_gradient(good, shape=shape)
    assert out.dtype == torch.float32 and torch.equal(out, good)
    assert check_gradient(good.half(), shape=list(shape)).dtype == torch.float32
    with pytest.raises(CodecError, match=r"\[2, 8, 4, 4\].*\[2, 8, 4, 3\]"):
        check_gradient(features(14, (2, 8, 4, 3)), shape=shape)
    with pytest.raises(CodecError, match="dtype"):
        check_gradient(torch.zeros(shape, dtype=torch.int32), shape=shape)
    with pytest.raises(CodecError, match="dtype"):
        check_gradient(good.double(), shape=shape)
    for bad in (float("nan"), float("inf"), float("-inf")):
        g = good.clone()
        g[1, 2, 3, 0] = bad
        with pytest.raises(CodecError, match="non-finite"):
            check_gradient(g, shape=shape)


def test_encoded_size_report():
    x = torch.relu(features(15, (4, 32, 8, 8)))
    report = encoded_size_report(x)
    assert list(report) == [
        "float32",
        "float32+zstd",
        "float16",
        "float16+zstd",
        "int8",
        "int8+zstd",
    ]
    assert report["float32"] > x.numel() * 4
    assert report["float32"] > report["float16"] > report["int8"]
    assert report["float32+zstd"] < report["float32"]


def test_codec_source_never_names_an_unsafe_loader():
    text = Path(codec.__file__).read_text(encoding="utf-8")
    assert "pickle" not in text.lower()
    assert "torch.load" not in text
