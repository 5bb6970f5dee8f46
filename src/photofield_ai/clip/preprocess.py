"""CLIP image preprocessing: decode, upright, resize, center crop, normalize.

The geometry is torchvision's `Resize(S)` + `CenterCrop(S)` as the original service used, done
one of two ways, both within a rounding error of the reference (full decode + full resize +
crop, kept in tests/test_preprocess.py):
- an image to be shrunk (a photo, or a thumbnail larger than S) has its geometry computed from
  the original dimensions and only the crop box resized, with Pillow, out of a JPEG decoded at
  a libjpeg-turbo DCT scale. That keeps a 12-megapixel photo from ever being fully decoded and a
  1×20000 strip from being resized whole;
- an image to be enlarged — Photofield's thumbnails: 256×192 has a 192-px short side — is
  resized whole and then cropped, as torchvision does, with OpenCV (imaging/resize.py: six times
  Pillow's speed, and enlarging is where its kernel agrees with Pillow's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from photofield_ai.imaging.decode import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    DecodeLimits,
    dct_scale_covering,
    decoded_rgb,
    make_upright,
    make_upright_array,
)
from photofield_ai.imaging.errors import ImageDecodeError
from photofield_ai.imaging.resize import resize_bicubic

# OpenAI CLIP's normalization (clip/clip.py, _transform).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# normalize() as pixel × scale + bias per channel, in float32: the CPU's arithmetic, and what
# runtime.graph puts into a float visual model that is made to take uint8 pixels.
NORMALIZE_SCALE = (1.0 / (255.0 * np.asarray(CLIP_STD, dtype=np.float32))).astype(np.float32)
NORMALIZE_BIAS = (
    -np.asarray(CLIP_MEAN, dtype=np.float32) / np.asarray(CLIP_STD, dtype=np.float32)
).astype(np.float32)


@dataclass(frozen=True)
class CropGeometry:
    """Where the S×S crop of torchvision's Resize(S) + CenterCrop(S) lies in source pixels."""

    left: float
    top: float
    right: float
    bottom: float

    def scaled(self, factor: float) -> tuple[float, float, float, float]:
        return (self.left * factor, self.top * factor, self.right * factor, self.bottom * factor)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision Resize(size): shorter side → `size`, longer → floor(size * long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_offsets(resized_width: int, resized_height: int, size: int) -> tuple[int, int]:
    """Left and top of CenterCrop(size) in the resized image, rounded as torchvision's
    `center_crop` does (round((resized - size) / 2))."""
    return round((resized_width - size) / 2.0), round((resized_height - size) / 2.0)


def crop_geometry(width: int, height: int, size: int) -> CropGeometry:
    """The center crop of the resized image, mapped back into the original's coordinates."""
    rw, rh = resized_size(width, height, size)
    left, top = center_crop_offsets(rw, rh, size)
    sx, sy = width / rw, height / rh
    return CropGeometry(left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def choose_dct_scale(width: int, height: int, size: int) -> tuple[int, int]:
    """The smallest libjpeg-turbo scale that still leaves the shorter side at least `size`.

    Never below `size`: upsampling a DCT-scaled image loses detail the model would have seen.
    """
    return dct_scale_covering(min(width, height), size)


def normalize(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """HWC uint8 RGB → CHW float32 normalized with CLIP's mean and std."""
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    chw *= NORMALIZE_SCALE[:, None, None]
    chw += NORMALIZE_BIAS[:, None, None]
    return chw


# Enlarging whole costs the resized image's area; beyond this many crops' worth (a long strip),
# the crop box is resized instead.
_MAX_WHOLE_RESIZE_CROPS = 3


def enlarges(width: int, height: int, size: int) -> bool:
    """Whether Resize(size) enlarges this image (its short side is at most `size`) and the
    enlarged whole is small enough to resize before cropping."""
    if min(width, height) > size:
        return False
    rw, rh = resized_size(width, height, size)
    return rw * rh <= _MAX_WHOLE_RESIZE_CROPS * size * size


def enlarge_and_crop(pixels: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    """Upright H×W×3 → S×S×3: torchvision's Resize(S) of the whole image, then CenterCrop(S)."""
    height, width = pixels.shape[:2]
    rw, rh = resized_size(width, height, size)
    resized = resize_bicubic(pixels, rw, rh)
    left, top = center_crop_offsets(rw, rh, size)
    return resized[top : top + size, left : left + size]


def _crop_box_resized(d: DecodedImage, size: int) -> npt.NDArray[np.uint8]:
    decoded = make_upright(d.rgb, d.orientation)
    box = crop_geometry(*d.upright_size, size).scaled(d.scale)
    try:
        out = decoded.resize((size, size), Image.Resampling.BICUBIC, box=box)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot resize image: {exc}") from None
    return np.asarray(out, dtype=np.uint8)


def decode_and_crop(
    data: bytes, size: int, limits: DecodeLimits | int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.uint8]:
    """Image bytes → upright S×S×3 uint8 RGB crop, the fast way (JPEGs at a DCT scale)."""
    if isinstance(limits, int):
        limits = DecodeLimits(limits)
    with decoded_rgb(data, limits, dct_scale=lambda w, h: choose_dct_scale(w, h, size)) as d:
        # An enlarged image is never DCT-scaled (its short side is already at most S).
        if d.scale == 1.0 and enlarges(*d.upright_size, size):
            return enlarge_and_crop(make_upright_array(d.array, d.orientation), size)
        return _crop_box_resized(d, size)


def preprocess_image(
    data: bytes, size: int, limits: DecodeLimits | int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.float32]:
    """Image bytes → the CLIP visual model's [3, S, S] float32 input."""
    return normalize(decode_and_crop(data, size, limits))
