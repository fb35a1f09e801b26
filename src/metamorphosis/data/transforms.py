"""The one image preprocessing used for training, evaluation and serving.

Every dataset turns a picture into a tensor through :class:`ImageTransform`, and
the run dir records ``ImageTransform.to_dict()`` so that ``Producer.preprocess``
rebuilds exactly the same function. Two routes lead to the same tensor:

* ``transform(pil_image)`` for a user's photo;
* ``transform.from_array(uint8_array)`` for the datasets, which cache resized
  ``uint8`` arrays in memory; ``transform.resize(pil_image)`` makes that array.

Both go through the same PIL resize and the same normalisation, so a cached
training image and a freshly decoded one give bit-identical tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError

__all__ = ["ImageTransform", "to_pixels"]

_FORMAT_VERSION = 1
_MODE = "RGB"
_RESAMPLE = "bilinear"


def _check_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    ok = (
        isinstance(image_size, (list, tuple))
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in image_size)
    )
    if not ok:
        raise ConfigError(
            f"image_size={image_size!r} is invalid: expected [height, width] of positive integers"
        )
    return int(image_size[0]), int(image_size[1])


def to_pixels(images: torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    """Undo a ``(x - mean) / std`` normalisation: tensors back to pixel range [0, 1]."""
    return (images * std + mean).clamp(0.0, 1.0)


class ImageTransform:
    """RGB, bilinear resize to ``(H, W)``, scale to [0, 1], normalise to [-1, 1].

    The fixed mean / std of 0.5 keep the inputs centred without dataset
    statistics, which a consumer could not reproduce and which would leak
    information about the producer's data.

    Args:
        image_size: ``(height, width)`` of the output tensors (an int means square).
        mean: subtracted from every channel after scaling to [0, 1].
        std: divides every channel after the mean is subtracted.
    """

    def __init__(
        self, image_size: Sequence[int] | int, *, mean: float = 0.5, std: float = 0.5
    ) -> None:
        self.image_size = _check_size(image_size)
        if not isinstance(std, (int, float)) or std <= 0:
            raise ConfigError(f"std={std!r} is invalid: expected a number > 0")
        if not isinstance(mean, (int, float)):
            raise ConfigError(f"mean={mean!r} is invalid: expected a number")
        self.mean = float(mean)
        self.std = float(std)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every tensor this transform returns."""
        return (3, *self.image_size)

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Preprocess a PIL image (or, for convenience, an array) into 3×H×W float32."""
        if isinstance(image, np.ndarray):
            return self.from_array(image)
        if not isinstance(image, Image.Image):
            raise DataError(
                f"image of type {type(image).__name__} is invalid: expected a PIL image or an "
                "H×W×3 array"
            )
        return self._normalise(self.resize(image))

    def resize(self, image: Image.Image) -> np.ndarray:
        """Convert to RGB and resize; returns the ``H×W×3`` uint8 array that datasets cache."""
        image = _to_rgb(image)
        height, width = self.image_size
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.array(image, dtype=np.uint8)

    def from_array(self, array: np.ndarray) -> torch.Tensor:
        """Preprocess an ``H×W×3`` uint8 array or float array in [0, 1].

        Float input is quantised to 8 bits first so that it gives exactly the
        tensor the same picture gives as a PIL image; ``H×W`` and ``H×W×1``
        grey arrays are repeated to RGB like ``PIL.Image.convert("RGB")``.
        """
        return self._normalise(self.resize_array(array))

    def resize_array(self, array: np.ndarray) -> np.ndarray:
        """The resized ``H×W×3`` uint8 array of an image array (what datasets cache)."""
        pixels = _as_uint8_rgb(array)
        if pixels.shape[:2] != self.image_size:
            pixels = self.resize(Image.fromarray(pixels))
        return pixels

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: this transform's outputs back to pixel range [0, 1]."""
        return to_pixels(images, mean=self.mean, std=self.std)

    def _normalise(self, pixels: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        tensor = tensor.to(torch.float32).div_(255.0)
        return tensor.sub_(self.mean).div_(self.std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description, enough for :meth:`from_dict` to rebuild this transform."""
        return {
            "version": _FORMAT_VERSION,
            "image_size": list(self.image_size),
            "mode": _MODE,
            "resample": _RESAMPLE,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageTransform:
        """Rebuild a transform written by :meth:`to_dict` (e.g. from ``run.json``)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"transform must be a mapping, got {type(d).__name__}")
        allowed = {"version", "image_size", "mode", "resample", "mean", "std"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"unknown transform key(s) {unknown}; allowed: {sorted(allowed)}")
        if "image_size" not in d:
            raise ConfigError("transform has no image_size")
        fixed = {"version": _FORMAT_VERSION, "mode": _MODE, "resample": _RESAMPLE}
        for key, expected in fixed.items():
            if d.get(key, expected) != expected:
                raise ConfigError(
                    f"transform {key}={d[key]!r} is unsupported: expected {expected!r}"
                )
        return cls(d["image_size"], mean=d.get("mean", 0.5), std=d.get("std", 0.5))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageTransform):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.image_size, self.mean, self.std))

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""16-bit grey modes (PNG / TIFF); PIL's ``convert("RGB")`` clips them at 255 (all white)."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL mode: 16-bit grey is scaled to 8 bits, palette transparency dropped."""
    if image.mode in _WIDE_GREY:
        wide = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when converting such a palette to RGB
    return image if image.mode == _MODE else image.convert(_MODE)


def _as_uint8_rgb(array: np.ndarray) -> np.ndarray:
    pixels = np.asarray(array)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise DataError(f"image array of shape {pixels.shape} is invalid: expected H×W×3")
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.all(np.isfinite(pixels)) or pixels.min() < -1e-3 or pixels.max() > 1 + 1e-3:
            raise DataError("float image array is invalid: expected finite values in [0, 1]")
        return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise DataError(
        f"image array dtype {pixels.dtype} is invalid: expected uint8 or float in [0, 1]"
    )
