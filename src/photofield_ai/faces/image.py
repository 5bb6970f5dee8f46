"""Decoding original photos for face detection: any format phones produce, upright, and no
larger than detection and alignment need."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from photofield_ai.clip.preprocess import (
    SUPPORTED_FORMATS,
    dct_scale_covering,
    decode_jpeg_scaled,
    exif_orientation,
    make_upright,
    open_image,
    pillow_rgb,
    upright_size,
)

# HEIC/HEIF (iPhones) through pillow-heif; AVIF is built into Pillow.
FACE_FORMATS = (*SUPPORTED_FORMATS, "HEIF", "AVIF")
_heif_registered = False


def register_heif() -> bool:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_registered = True
        except ImportError:
            return False
    return True


@dataclass(frozen=True)
class WorkingImage:
    """The photo, upright, at `scale` × its upright original size (≤ 1)."""

    image: Image.Image
    scale: float
    original_size: tuple[int, int]  # upright width, height


def decode_for_faces(data: bytes, max_pixels: int, working_long_side: int) -> WorkingImage:
    """Decode so that the long side is at least `working_long_side` (or the original's): JPEGs
    at a libjpeg-turbo DCT scale, anything else with Pillow's draft mode or a resize."""
    register_heif()
    im = open_image(data, max_pixels, FACE_FORMATS)
    orientation = exif_orientation(im)
    width, height = im.size
    decoded: Image.Image | None = None
    if im.format == "JPEG":
        num, den = dct_scale_covering(max(width, height), working_long_side)
        scaled = decode_jpeg_scaled(data, im, num, den)
        if scaled is not None:
            decoded = scaled[0]
    if decoded is None:
        decoded = pillow_rgb(im)
        long_side = max(decoded.size)
        if long_side > 2 * working_long_side:
            factor = working_long_side / long_side
            decoded = decoded.resize(
                (max(1, round(decoded.width * factor)), max(1, round(decoded.height * factor))),
                Image.Resampling.BILINEAR,
            )
    upright = make_upright(decoded, orientation)
    original = upright_size(width, height, orientation)
    return WorkingImage(upright, upright.width / original[0], original)
