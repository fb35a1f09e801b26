"""Inputs the producer serves: an image folder and a video file, read frame by frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from metamorphosis.data import ImageTransform, UnknownItemError
from metamorphosis.errors import DataError
from metamorphosis.serve.app import create_app
from metamorphosis.serve.codec import decode_tensors
from metamorphosis.serve.server import build_service, key_store
from metamorphosis.serve.service import FolderSource, VideoSource

av = pytest.importorskip("av")


def _write_video(path, frames):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _frames(count):
    """Frames whose brightness rises with their index, so order is checkable."""
    return [np.full((32, 32, 3), 20 + 25 * i, dtype=np.uint8) for i in range(count)]


def test_video_frames_are_decoded_in_order_and_resized(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, _frames(6))
    source = VideoSource(path, ImageTransform(16))
    assert source.ids() == [f"frame-{i:06d}" for i in range(6)]
    images = source.images(["frame-000000", "frame-000005"])
    assert images.shape == (2, 3, 16, 16)
    assert images[1].mean() > images[0].mean() + 0.5  # the later frame is brighter
    with pytest.raises(UnknownItemError, match="frame-000099"):
        source.images(["frame-000099"])


def test_a_broken_video_is_a_data_error(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="broken.mp4"):
        VideoSource(path, ImageTransform(16))


def test_serving_a_video_gives_features_per_frame(served_run, tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, _frames(4))
    service = build_service(served_run, source=str(path))
    secret = key_store(served_run).issue("shape").secret
    client = TestClient(create_app(service))
    headers = {"Authorization": f"Bearer {secret}"}
    ids = client.get("/v1/tasks/shape/items", headers=headers).json()["ids"]
    assert ids == [f"frame-{i:06d}" for i in range(4)]
    response = client.get(
        "/v1/tasks/shape/features", params={"ids": ",".join(ids)}, headers=headers
    )
    tensors, _ = decode_tensors(response.content)
    assert tensors["features"].shape[0] == 4 and torch.isfinite(tensors["features"]).all()


def test_an_image_folder_is_served_by_relative_path(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "sub" / "b.png")
    Image.new("RGB", (20, 20), (10, 10, 200)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    source = FolderSource(tmp_path, ImageTransform(8))
    assert source.ids() == ["a.jpg", "sub/b.png"]
    assert source.images(["sub/b.png"]).shape == (1, 3, 8, 8)


def test_a_corrupt_key_file_is_503_not_a_crash(served_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(served_run, copy)
    secret = key_store(copy).issue("shape").secret
    client = TestClient(create_app(build_service(copy)))
    (copy / "keys.sqlite").write_text("{not json")
    headers = {"Authorization": f"Bearer {secret}"}
    response = client.get("/v1/tasks/shape/schema", headers=headers)
    assert response.status_code == 503 and response.json() == {"error": "key store unavailable"}
