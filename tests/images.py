"""Test images made from the README's real photo, in every format and shape the server meets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO = Path(__file__).parent / "data" / "heavy-industry.jpg"


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """The real photo resized to any size, with sensor-like noise so that large sizes still carry
    fine detail (a plain upscale would be unrealistically smooth)."""
    base = Image.open(PHOTO).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    noisy = np.asarray(base, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(width: int, height: int, quality: int = 92, seed: int = 0, **params: object) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=quality, **params)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
