"""Hostile files and requests: what an attacker (or a very unlucky photo library) sends.

Each builder makes the exact kind of file named in the hardening issues: built by hand where
Pillow cannot write it (interlaced PNG, a WebP whose canvas is far larger than its data, a JPEG
whose header lies about its size).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.images import encode, jpeg, photo


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# Adam7: (x start, y start, x step, y step) of the seven passes.
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def interlaced_png(width: int, height: int) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow reads them but cannot write them)."""
    rgb = np.asarray(photo(width, height))
    raw = b""
    for x0, y0, dx, dy in _ADAM7:
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def truncated_interlaced_png() -> bytes:
    data = interlaced_png(400, 300)
    return data[: len(data) // 2]


def png_with_corrupt_idat() -> bytes:
    """A PNG whose compressed pixel data is garbage from the middle on (valid chunk CRC)."""
    png = encode(photo(400, 300), "PNG")
    start = png.index(b"IDAT") + 4
    length = struct.unpack(">I", png[start - 8 : start - 4])[0]
    data = bytearray(png[start : start + length])
    for i in range(len(data) // 2, len(data)):
        data[i] = (data[i] * 7 + 13) & 0xFF
    return png[: start - 8] + _png_chunk(b"IDAT", bytes(data)) + png[start + length + 4 :]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header claims width × height (a 4.7 kB '99 Mpx' photo)."""
    data = bytearray(jpeg(64, 64, quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def mpo(width: int = 640, height: int = 480) -> bytes:
    """A camera-style MPO: a JPEG with an MP Format second image (a preview or the other eye)."""
    first, second = photo(width, height, seed=1), photo(width // 2, height // 2, seed=2)
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second], quality=90)
    return buf.getvalue()


def webp_with_huge_canvas(side: int = 9998) -> bytes:
    """An animated WebP of two 1×1 frames on a side × side canvas: ~140 bytes on the wire, a
    multi-gigabyte decode for a decoder that composites on the canvas."""
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tiny, "WEBP", lossless=True)
    data = tiny.getvalue()
    vp8l = data[data.index(b"VP8L") :]  # chunk header + payload (+ pad)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")

    def u24(v: int) -> bytes:
        return struct.pack("<I", v)[:3]

    vp8x = chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + u24(side - 1) + u24(side - 1))  # animation
    anim = chunk(b"ANIM", struct.pack("<IH", 0, 0))
    frame = u24(0) + u24(0) + u24(0) + u24(0) + u24(100) + b"\x00"  # at 0,0; 1×1; 100 ms
    frames = chunk(b"ANMF", frame + vp8l) * 2
    body = b"WEBP" + vp8x + anim + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def deep_json(depth: int = 100_000) -> bytes:
    return b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"


def long_word(chars: int, seed: int = 0) -> str:
    """One 'word' of random letters: the tokenizer's quadratic worst case."""
    rng = np.random.default_rng(seed)
    return "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, chars))
