"""Decoding original photos for face detection: any format phones produce, upright, and no
larger than detection and alignment need."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from photofield_ai.imaging.decode import (
    SUPPORTED_FORMATS,
    DecodeLimits,
    dct_scale_covering,
    decoded_rgb,
    make_upright,
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


def decode_for_faces(data: bytes, limits: DecodeLimits, working_long_side: int) -> WorkingImage:
    """Decode so that the long side is at least `working_long_side` (or the original's): JPEGs
    at a DCT scale, anything else in full and then reduced (within the decode budget)."""
    register_heif()
    with decoded_rgb(
        data,
        limits,
        FACE_FORMATS,
        dct_scale=lambda w, h: dct_scale_covering(max(w, h), working_long_side),
    ) as d:
        decoded = d.rgb
        long_side = max(decoded.size)
        if long_side > 2 * working_long_side:
            factor = working_long_side / long_side
            decoded = decoded.resize(
                (max(1, round(decoded.width * factor)), max(1, round(decoded.height * factor))),
                Image.Resampling.BILINEAR,
            )
        upright = make_upright(decoded, d.orientation)
        original = d.upright_size
    return WorkingImage(upright, upright.width / original[0], original)
