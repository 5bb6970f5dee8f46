"""The bad-input corpus: every kind of broken, odd or hostile request a photo server meets.

Each case is (name, request, expected status, text the error must contain). Built from the README's
real photo; the arithmetic-coded JPEG was made once with libjpeg-turbo's `cjpeg -arithmetic`
(Pillow cannot write one) and is stored in tests/data.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.images import encode, jpeg, photo, png_bomb, png_chunk

DATA = Path(__file__).parent / "data"
SUPPORTED = "supported formats: JPEG, PNG, WEBP, GIF, BMP, TIFF"

# Limits of the server these cases run against (see test_hardening.limits_server).
LIMITS = {
    "PHOTOFIELD_AI_MAX_BODY_BYTES": "3000000",
    "PHOTOFIELD_AI_MAX_IMAGES_PER_REQUEST": "4",
    "PHOTOFIELD_AI_MAX_TEXTS_PER_REQUEST": "8",
    "PHOTOFIELD_AI_MAX_IMAGE_PIXELS": "50000000",
}


@dataclass
class Case:
    name: str
    status: int
    needle: str
    path: str = "/image-embeddings"
    method: str = "POST"
    files: list[tuple[str, tuple[str, bytes] | tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False


def image_case(
    name: str,
    data: bytes,
    status: int,
    needle: str = "",
    filename: str = "photo.jpg",
    content_type: str | None = "image/jpeg",
) -> Case:
    part: tuple[str, bytes] | tuple[str, bytes, str] = (
        (filename, data) if content_type is None else (filename, data, content_type)
    )
    return Case(name, status, needle, files=[("image", part)])


def text_case(name: str, body: bytes, status: int, needle: str = "") -> Case:
    return Case(
        name,
        status,
        needle,
        path="/text-embeddings",
        content=body,
        headers={"Content-Type": "application/json"},
    )


def png_16bit_rgb(width: int, height: int) -> bytes:
    """Pillow cannot write 16-bit RGB PNGs, so write the chunks by hand."""
    rgb = np.asarray(photo(width, height), dtype=np.uint16) * 257
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def ycck_jpeg() -> bytes:
    data = bytearray(encode(photo(300, 200).convert("CMYK"), "JPEG", quality=85))
    adobe = data.find(b"Adobe")
    data[adobe + 11] = 2  # APP14 transform: 2 = YCCK
    return bytes(data)


def jpeg_12bit() -> bytes:
    data = bytearray(jpeg(300, 200))
    sof = data.find(b"\xff\xc0")
    data[sof + 1], data[sof + 4] = 0xC1, 12  # extended sequential, 12-bit samples
    return bytes(data)


def corrupt_huffman() -> bytes:
    data = bytearray(jpeg(300, 200))
    sos = data.find(b"\xff\xda")
    rng = random.Random(0)
    for i in range(sos + 300, sos + 600):
        data[i] = rng.randrange(255)
    return bytes(data)


def animated(fmt: str) -> bytes:
    frames = [photo(200, 150, seed=i) for i in range(3)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def palette_transparency() -> bytes:
    im = photo(200, 150).convert("P", palette=Image.Palette.ADAPTIVE)
    im.info["transparency"] = 0
    return encode(im, "PNG")


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, body in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode()
        out += body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def cases() -> list[Case]:
    good = jpeg(320, 240)
    png = encode(photo(320, 240), "PNG")
    big_body = jpeg(2500, 2500, quality=100)  # > 3 MB
    assert len(big_body) > 3_000_000
    return [
        # -- images that must be refused ----------------------------------------------------
        image_case("zero bytes", b"", 422, "empty file"),
        image_case("random bytes", random.Random(1).randbytes(5000), 422, "not a recognized"),
        image_case("text file named .jpg", b"just some notes\n" * 20, 422, "not a recognized"),
        image_case("truncated JPEG", good[: len(good) // 2], 422, "filename 'photo.jpg'"),
        image_case("truncated PNG", png[: len(png) // 2], 422, "cannot decode"),
        image_case("12-bit JPEG", jpeg_12bit(), 415, "12-bit JPEG"),
        image_case(
            "decompression bomb",
            png_bomb(50000),
            413,
            "too many pixels",
        ),
        image_case(
            "more pixels than the setting allows",
            # One colour: the size is what matters, and noise for 56 Mpx took seconds.
            encode(Image.new("RGB", (8000, 7000), (90, 120, 150)), "JPEG", quality=30),
            413,
            "more than the limit of 50000000",
        ),
        image_case(
            "HEIC",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200),
            415,
            "HEIC; " + SUPPORTED,
        ),
        image_case("AVIF", encode(photo(64, 48), "AVIF"), 415, "AVIF; " + SUPPORTED),
        image_case(
            "SVG", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', 415, "SVG"
        ),
        image_case("PDF", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", 415, "PDF"),
        image_case(
            "ICO (real image, not supported)",
            encode(photo(32, 32), "ICO"),
            415,
            "unsupported image format ICO",
        ),
        # -- odd but valid images: 200 ------------------------------------------------------
        image_case("corrupt huffman data (decoded best-effort)", corrupt_huffman(), 200),
        image_case("progressive JPEG", encode(photo(320, 240), "JPEG", progressive=True), 200),
        image_case("arithmetic-coded JPEG", (DATA / "arithmetic-coded.jpg").read_bytes(), 200),
        image_case("CMYK JPEG", encode(photo(300, 200).convert("CMYK"), "JPEG"), 200),
        image_case("YCCK JPEG", ycck_jpeg(), 200),
        image_case("grayscale JPEG", encode(photo(300, 200).convert("L"), "JPEG"), 200),
        image_case("16-bit RGB PNG", png_16bit_rgb(120, 90), 200),
        image_case("palette PNG with transparency", palette_transparency(), 200),
        image_case("LA PNG", encode(photo(200, 150).convert("LA"), "PNG"), 200),
        image_case("RGBA PNG", encode(photo(200, 150).convert("RGBA"), "PNG"), 200),
        image_case("animated GIF", animated("GIF"), 200),
        image_case("animated WebP", animated("WEBP"), 200),
        image_case("1x1 image", encode(photo(1, 1), "PNG"), 200),
        image_case("1x20000 image", encode(photo(1, 20000), "PNG"), 200),
        image_case("part with a wrong Content-Type", good, 200, content_type="text/plain"),
        image_case("part with no Content-Type", good, 200, content_type=None),
        # -- malformed requests -------------------------------------------------------------
        Case(
            "non-multipart body",
            415,
            "multipart/form-data",
            content=b"\xff\xd8 raw jpeg",
            headers={"Content-Type": "image/jpeg"},
        ),
        Case(
            "multipart with no file parts",
            400,
            "not a file",
            content=multipart([("a", None, b"1")]),
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        ),
        Case(
            "multipart with nothing in it",
            400,
            "no image files",
            content=b"--b0undary--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        ),
        Case(
            "text field next to an image",
            400,
            "form field 'note' is text",
            content=multipart([("note", None, b"hello"), ("image", "a.jpg", good)]),
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        ),
        Case(
            "more parts than the limit",
            413,
            "at most 4 images",
            files=[("image", (f"{i}.jpg", good, "image/jpeg")) for i in range(5)],
        ),
        Case(
            "body over the limit (Content-Length)",
            413,
            "larger than the limit",
            files=[("image", ("big.jpg", big_body, "image/jpeg"))],
        ),
        Case(
            "body over the limit (chunked, no Content-Length)",
            413,
            "larger than the limit",
            content=multipart([("image", "big.jpg", big_body)]),
            chunked=True,
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        ),
        Case(
            "malformed multipart boundary",
            400,
            "",
            content=b"--other\r\nContent-Disposition: form-data; name=image; filename=a.jpg"
            b"\r\n\r\n" + good + b"\r\n--other--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        ),
        Case(
            "multipart without a boundary",
            400,
            "",
            content=b"--x\r\n\r\n--x--\r\n",
            headers={"Content-Type": "multipart/form-data"},
        ),
        Case(
            "one bad image among good ones",
            422,
            "image 1 (field 'image', filename 'bad.jpg')",
            files=[
                ("image", ("good.jpg", good, "image/jpeg")),
                ("image", ("bad.jpg", b"garbage", "image/jpeg")),
                ("image", ("good2.jpg", good, "image/jpeg")),
            ],
        ),
        # -- texts --------------------------------------------------------------------------
        text_case("JSON that is not an object", b'["hawk"]', 400, "JSON object"),
        text_case("texts missing", b'{"text": "hawk"}', 400, 'missing "texts"'),
        text_case("texts not a list", b'{"texts": "hawk"}', 400, "must be a list"),
        text_case("texts with a number", b'{"texts": ["a", 1]}', 400, '"texts"[1]'),
        text_case("texts with null", b'{"texts": [null]}', 400, "not NoneType"),
        text_case("invalid JSON", b'{"texts": [', 400, "not valid JSON"),
        text_case("invalid UTF-8", b'{"texts": ["caf\xe9"]}', 400, "UTF-8"),
        text_case(
            "more texts than the limit",
            b'{"texts": [' + b",".join([b'"a"'] * 9) + b"]}",
            413,
            "limit of 8",
        ),
        text_case("empty list", b'{"texts": []}', 200),
        text_case(
            "a 100 kB text (cut to the context)",
            ('{"texts": ["' + "sunset over the sea " * 5000 + '"]}').encode(),
            200,
        ),
        Case("wrong method", 405, "not allowed", method="PUT"),
        Case("unknown path", 404, "not found: /image-embedding", path="/image-embedding"),
        Case(
            "doubled slash",
            200,
            "",
            path="//text-embeddings",
            content=b'{"texts": ["x"]}',
            headers={"Content-Type": "application/json"},
        ),
    ]
