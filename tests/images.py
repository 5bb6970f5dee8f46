"""Test images made from the README's real photo, in every format and shape the server meets."""

from __future__ import annotations

import functools
import io
import struct
import zlib
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


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def png_bomb(side: int = 50_000) -> bytes:
    """A valid 1-bit PNG of side × side black pixels in a small file (~300 kB for 50,000²: a
    decompression bomb that would really decode). Deflated a block of rows at a time: Pillow
    took ~10 s on the 2-core machine to make the same file."""
    rows = (b"\x00" * (1 + (side + 7) // 8)) * 64
    deflate = zlib.compressobj(9)
    blocks, rest = divmod(side, 64)
    idat = b"".join(deflate.compress(rows) for _ in range(blocks))
    idat += deflate.compress(rows[: rest * len(rows) // 64]) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
