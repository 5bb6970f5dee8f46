"""imaging/: the decode memory budget, and the cost estimates it admits decodes by, checked
against the peaks real decodes reach."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from photofield_ai.imaging.budget import DecodeBudget
from photofield_ai.imaging.decode import (
    dct_scale_covering,
    decode_cost,
    make_upright,
    make_upright_array,
    open_image,
)
from photofield_ai.imaging.errors import ImageTooLargeError
from tests import hostile
from tests.conftest import wait_until
from tests.corpus import png_16bit_rgb
from tests.images import encode, photo

MIB = 1 << 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_array_transposes_are_pillows(orientation: int) -> None:
    stored = photo(7, 5)
    expected = np.asarray(make_upright(stored, orientation))
    got = make_upright_array(np.asarray(stored), orientation)
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_budget_admits_in_order_and_refuses_what_never_fits() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []
    with budget.reserve(60):

        def take(name: str, n: int) -> None:
            with budget.reserve(n):
                order.append(name)

        big = threading.Thread(target=take, args=("big", 80))
        big.start()
        wait_until(lambda: budget.waiting == 1, '"big" waits')  # "big" is waiting first ...
        small = threading.Thread(target=take, args=("small", 10))
        small.start()
        wait_until(lambda: budget.waiting == 2, '"small" waits')
        time.sleep(0.05)  # time enough for a budget that lets "small" jump the queue
        # ... and "small" would fit now, but waits its turn behind "big".
        assert order == [] and budget.used_bytes == 60
    big.join(5)
    small.join(5)
    assert order == ["big", "small"] and budget.used_bytes == 0
    with (
        pytest.raises(ImageTooLargeError, match="more than the decode memory budget"),
        budget.reserve(101),
    ):
        pass


def _animated_gif(width: int, height: int) -> bytes:
    frames = [photo(width, height, seed=i).convert("P") for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def _animated_webp(width: int, height: int) -> bytes:
    frames = [photo(width, height, seed=i) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


W, H = 3000, 2000
FILES = {
    "PNG RGB": lambda: encode(photo(W, H), "PNG", compress_level=1),
    "PNG RGBA": lambda: encode(photo(W, H).convert("RGBA"), "PNG", compress_level=1),
    "PNG 16-bit": lambda: png_16bit_rgb(W, H),
    "interlaced PNG": lambda: hostile.interlaced_png(W, H),
    "WebP": lambda: encode(photo(W, H), "WEBP", quality=80),
    "animated WebP": lambda: _animated_webp(W, H),
    "animated GIF": lambda: _animated_gif(W, H),
    "TIFF": lambda: encode(photo(W, H), "TIFF"),
    "BMP": lambda: encode(photo(W, H), "BMP"),
    "CMYK JPEG (Pillow, draft)": lambda: encode(photo(W, H).convert("CMYK"), "JPEG"),
    "JPEG (libjpeg-turbo)": lambda: encode(photo(W, H), "JPEG"),
    "MPO": lambda: hostile.mpo(W, H),
}

_MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from photofield_ai.imaging.decode import DecodeLimits, decoded_rgb, dct_scale_covering

    def rss(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    data = Path(sys.argv[1]).read_bytes()
    scale = lambda w, h: dct_scale_covering(min(w, h), 224)
    with decoded_rgb(data[:], DecodeLimits(), dct_scale=scale) as d:  # warm up the codec
        pass
    Path("/proc/self/clear_refs").write_text("5")
    before = rss("VmRSS")
    with decoded_rgb(data, DecodeLimits(), dct_scale=scale) as d:
        d.rgb.resize((224, 224))
    print(json.dumps({"growth": rss("VmHWM") - before}))
    """
)


@pytest.mark.parametrize("name", list(FILES))
def test_decode_cost_covers_the_measured_peak(name: str, tmp_path: Path) -> None:
    """The estimate a decode is admitted by is at least what it really takes (its peak RSS
    over the start, in a fresh process), so the budget bounds memory."""
    data = FILES[name]()
    path = tmp_path / "image"
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout)["growth"]
    im = open_image(data, 10**9)
    jpeg = im.format in ("JPEG", "MPO")
    estimate = decode_cost(im, dct_scale_covering(min(im.size), 224) if jpeg else None)
    print(f"{name}: measured {growth / MIB:.1f} MiB, estimate {estimate / MIB:.1f} MiB")
    assert growth <= estimate


def test_the_huge_canvas_webp_is_refused_by_its_estimate() -> None:
    im = open_image(hostile.webp_with_huge_canvas(), 10**9)
    assert decode_cost(im) > 1024 * MIB
    assert isinstance(im, Image.Image)


def test_declared_pixels_read_jpeg_headers_with_libjpeg_turbo_and_agree_with_pillow() -> None:
    """Where a small image may be decoded on the event loop is decided from its declared size:
    the same as Pillow's for every JPEG kind (libjpeg-turbo reads those headers), a lying header
    counts what it claims, and what neither reads is None — never an exception."""
    from photofield_ai.imaging.decode import _turbojpeg, declared_pixels

    assert _turbojpeg() is not None, "libjpeg-turbo is installed for the test suite"
    image = photo(320, 200)
    files = [
        encode(image, "JPEG"),
        encode(image, "JPEG", progressive=True),
        encode(image.convert("L"), "JPEG"),
        encode(image.convert("CMYK"), "JPEG"),
        hostile.mpo(640, 480),
        hostile.jpeg_claiming(3000, 2000),
        (Path(__file__).parent / "data" / "arithmetic-coded.jpg").read_bytes(),
        encode(image, "PNG"),
    ]
    for data in files:
        with Image.open(io.BytesIO(data)) as im:
            assert declared_pixels(data) == im.width * im.height, im.format
    # Past Pillow's bomb threshold (Pillow's open refuses it): still the size it claims.
    assert declared_pixels(hostile.jpeg_claiming(30000, 20000)) == 600_000_000
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe0 not a jpeg", b"GIF89a", b"plain text"):
        assert declared_pixels(junk) is None


def test_jpeg_rgb_decodes_as_pyturbojpeg_does() -> None:
    """jpeg_rgb (the short calls keeping the interpreter lock) gives PyTurboJPEG's own pixels
    at every DCT scale, and a damaged file between good ones neither passes nor spoils the
    next decode."""
    import turbojpeg

    from photofield_ai.imaging import decode

    turbo: Any = decode._turbojpeg()
    assert turbo is not None and decode._TJPF_RGB == turbojpeg.TJPF_RGB
    good = encode(photo(333, 250, seed=4), "JPEG", quality=90)
    damaged = good[: len(good) // 2]
    for scale in ((1, 1), (1, 2), (1, 4), (1, 8)):
        expected = turbo.decode(good, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=scale)
        for _ in range(2):
            np.testing.assert_array_equal(decode.jpeg_rgb(turbo, good, *scale), expected)
            with pytest.raises(decode.DamagedJpegError):
                decode.jpeg_rgb(turbo, damaged, *scale)
        with pytest.raises(OSError):  # not a JPEG at all: a fatal error, and then a good one
            decode.jpeg_rgb(turbo, b"\xff\xd8" + b"\x00" * 100, *scale)
        np.testing.assert_array_equal(decode.jpeg_rgb(turbo, good, *scale), expected)
    assert decode.jpeg_size(turbo, good) == (333, 250)


def _without_huffman_tables(data: bytes) -> bytes:
    """The JPEG with its DHT segments removed (as Motion-JPEG frames are sent): a decoder
    must use the standard tables, which Pillow's encoder used."""
    out, pos = bytearray(data[:2]), 2
    while data[pos + 1] != 0xDA:  # up to the start of scan
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] != 0xC4:
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    return bytes(out + data[pos:])


def test_no_image_decodes_with_tables_left_by_the_one_before() -> None:
    """libjpeg keeps an image's Huffman tables for the next image on the same decompressor.
    A file without its own tables decodes the same after a file with other tables (and after
    a damaged one) as it does first: nothing of one request reaches another's pixels."""
    from photofield_ai.imaging import decode

    turbo: Any = decode._turbojpeg()
    plain = encode(photo(120, 90, seed=2), "JPEG", quality=90)
    stripped = _without_huffman_tables(plain)
    assert len(stripped) < len(plain)
    first = decode.jpeg_rgb(turbo, stripped, 1, 1)
    np.testing.assert_array_equal(first, decode.jpeg_rgb(turbo, plain, 1, 1))
    optimized = encode(photo(120, 90, seed=3), "JPEG", quality=90, optimize=True)
    damaged = bytearray(optimized)
    damaged[len(damaged) // 3] ^= 0xFF
    for before in (optimized, bytes(damaged), b"\xff\xd8" + b"\x00" * 100):
        with contextlib.suppress(OSError):
            decode.jpeg_rgb(turbo, before, 1, 1)
        np.testing.assert_array_equal(decode.jpeg_rgb(turbo, stripped, 1, 1), first)


def test_threads_decode_at_once() -> None:
    from photofield_ai.imaging import decode

    turbo: Any = decode._turbojpeg()
    images = [encode(photo(200 + i, 150, seed=i), "JPEG", quality=85) for i in range(4)]
    expected = [decode.jpeg_rgb(turbo, data, 1, 1) for data in images]
    failures: list[str] = []

    def work(i: int) -> None:
        for n in range(40):
            k = (i + n) % len(images)
            if not np.array_equal(decode.jpeg_rgb(turbo, images[k], 1, 1), expected[k]):
                failures.append(f"thread {i}, image {k}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
