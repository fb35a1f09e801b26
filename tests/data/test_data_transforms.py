"""ImageTransform: one preprocessing for PIL images, cached arrays and run dirs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from metamorphosis.data import ImageTransform
from metamorphosis.errors import ConfigError, DataError


def _photo(size: tuple[int, int] = (23, 17), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_output_is_normalised_float32_chw() -> None:
    transform = ImageTransform((12, 20))
    out = transform(_photo())
    assert out.shape == (3, 12, 20) and out.dtype == torch.float32
    assert transform.output_shape == (3, 12, 20)
    black = transform(Image.new("RGB", (5, 5), (0, 0, 0)))
    white = transform(Image.new("RGB", (5, 5), (255, 255, 255)))
    assert torch.all(black == -1.0) and torch.all(white == 1.0)


def test_matches_a_naive_reference() -> None:
    image = _photo()
    expected = np.asarray(image.resize((16, 8), Image.Resampling.BILINEAR), dtype=np.float32)
    expected = (expected / 255.0 - 0.5) / 0.5
    out = ImageTransform((8, 16))(image)
    torch.testing.assert_close(out, torch.from_numpy(expected.transpose(2, 0, 1)))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_array_and_pil_routes_are_identical(mode: str) -> None:
    image = _photo().convert(mode)
    transform = ImageTransform((9, 11))
    rgb = np.asarray(image.convert("RGB"))
    assert torch.equal(transform(image), transform.from_array(rgb))
    assert torch.equal(transform(image), transform.from_array(transform.resize(image)))


def test_float_and_grey_arrays() -> None:
    transform = ImageTransform(6)
    pixels = np.asarray(_photo())
    assert torch.equal(transform.from_array(pixels / 255.0), transform.from_array(pixels))
    grey = pixels[:, :, 0]
    assert torch.equal(transform.from_array(grey), transform(Image.fromarray(grey)))
    assert torch.equal(transform.from_array(grey[:, :, None]), transform.from_array(grey))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((4, 4, 3), dtype=np.int32),
        np.full((4, 4, 3), 2.0),
        np.full((4, 4, 3), np.nan),
        np.zeros((0, 4, 3), dtype=np.uint8),
    ],
)
def test_bad_arrays_raise_data_error(array: np.ndarray) -> None:
    with pytest.raises(DataError, match="image array"):
        ImageTransform(4).from_array(array)


def test_dict_round_trip_is_json_safe() -> None:
    transform = ImageTransform((32, 48))
    text = json.dumps(transform.to_dict())
    rebuilt = ImageTransform.from_dict(json.loads(text))
    assert rebuilt == transform
    image = _photo()
    assert torch.equal(rebuilt(image), transform(image))


@pytest.mark.parametrize(
    "d",
    [
        {"image_size": [8, 8], "colour": "bgr"},
        {"image_size": [8, 8], "resample": "nearest"},
        {"mean": 0.5},
        {"image_size": [0, 8]},
    ],
)
def test_from_dict_rejects_what_it_cannot_reproduce(d: dict) -> None:
    with pytest.raises(ConfigError):
        ImageTransform.from_dict(d)


def test_to_pixels_undoes_the_normalisation() -> None:
    array = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    transform = ImageTransform(8, mean=0.4, std=0.3)
    pixels = transform.to_pixels(transform.from_array(array))
    expected = torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32) / 255.0)
    torch.testing.assert_close(pixels, expected)
