"""Decoding image files safely: what is refused before a pixel is decoded, what counts as a
broken file, and how a decode is kept to the size the caller needs.

Rules (README "Limits"):
- the header is read first (lazily); formats we do not decode are refused by name (415), images
  declaring more pixels than allowed are refused before decoding (413);
- a decode is admitted against the decode memory budget by its *declared* size (budget.py);
- JPEG (and MPO, the JPEG-with-a-second-image that cameras write: its primary image) is decoded
  by libjpeg-turbo at a DCT scale; a JPEG that libjpeg-turbo reports as damaged (missing data)
  is an error, not a grey-filled picture;
- other formats are decoded once, fully, with Pillow; any failure of that decode is an error
  (never a half-decoded image);
- EXIF orientation is read without decoding pixels, or after the one decode.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import threading
from collections.abc import Callable, Iterator
from ctypes import byref, c_int
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from photofield_ai.imaging.budget import DecodeBudget
from photofield_ai.imaging.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageFormatError,
)

# Formats decoded here; everything else is answered with 415. MPO is read as its JPEG.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
JPEG_FORMATS = ("JPEG", "MPO")
DEFAULT_MAX_PIXELS = 100_000_000

_EXIF_ORIENTATION = 0x0112
# EXIF orientation → the Pillow transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_DCT_SCALES = ((1, 8), (1, 4), (1, 2))


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost: declared pixels, and memory (shared with every other decode)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    budget: DecodeBudget | None = None


def dct_scale_covering(length: int, size: int) -> tuple[int, int]:
    """The smallest libjpeg-turbo scale that still leaves `length` pixels at least `size`."""
    for num, den in _DCT_SCALES:
        if math.ceil(length * num / den) >= size:
            return num, den
    return 1, 1


# -- libjpeg-turbo ----------------------------------------------------------------------------
class DamagedJpegError(OSError):
    """libjpeg-turbo decoded the file only by filling in data that is not there."""


_turbo_lock = threading.Lock()
_turbo: object | None = None
# libjpeg warnings that do not mean lost picture data: bytes between the last scan and a
# marker (padding some cameras write) — the picture itself was decoded in full.
_HARMLESS_WARNINGS = ("extraneous bytes before marker",)
_TJERR_WARNING = 0


def _turbojpeg() -> object | None:
    """The shared TurboJPEG handle, or None when libturbojpeg is not installed (Pillow is used)."""
    global _turbo
    if _turbo is None:
        with _turbo_lock:
            if _turbo is None:
                try:
                    from turbojpeg import TurboJPEG

                    class CheckedTurboJPEG(TurboJPEG):  # type: ignore[misc]
                        """PyTurboJPEG only *warns* on a truncated or corrupt JPEG and returns
                        grey-filled pixels. Warnings that mean missing data raise
                        DamagedJpegError; fatal errors raise OSError as before.
                        (PyTurboJPEG 1.x's private hook; the version is pinned below 2.)"""

                        def _TurboJPEG__report_error(self, handle: object) -> None:
                            message = str(self._TurboJPEG__get_error_string(handle))
                            code = self._TurboJPEG__get_error_code
                            warning = code is None or code(handle) == _TJERR_WARNING
                            if not warning:
                                raise OSError(message)
                            if any(h in message for h in _HARMLESS_WARNINGS):
                                return
                            raise DamagedJpegError(message)

                    _turbo = CheckedTurboJPEG()
                except (OSError, RuntimeError, ImportError):
                    _turbo = False
    return _turbo or None


_TJPF_RGB = 0  # turbojpeg.TJPF_RGB
_quick_lock = threading.Lock()
_quick: Any = None


def _held_lock_calls(turbo: Any) -> Any:
    """libturbojpeg's short calls (make and destroy a decompressor, read a header) loaded
    through ctypes.PyDLL, which keeps the interpreter lock during a call. PyTurboJPEG's decode
    makes four calls into the library through ctypes.CDLL, and each releases the lock and
    takes it back: with the event loop and two decode threads wanting it, each hand-over is a
    wake-up and a wait, where the three short calls take 1-10 µs. Only the decompression
    itself (hundreds of µs) lets go of the lock now. A decompressor is still made and
    destroyed per image, as PyTurboJPEG does: libjpeg keeps an image's Huffman and
    quantization tables for the next one (abbreviated datastreams), so a kept decompressor
    decoded a file without tables with the previous file's — another request's."""
    global _quick
    if _quick is None:
        with _quick_lock:
            if _quick is None:
                lib = ctypes.PyDLL(turbo._TurboJPEG__find_turbojpeg())
                lib.tjInitDecompress.restype = ctypes.c_void_p
                lib.tjDestroy.argtypes = [ctypes.c_void_p]
                lib.tjDestroy.restype = ctypes.c_int
                lib.tjDecompressHeader3.argtypes = [
                    ctypes.c_void_p,
                    ctypes.POINTER(ctypes.c_ubyte),
                    ctypes.c_ulong,
                    *[ctypes.POINTER(ctypes.c_int)] * 4,
                ]
                lib.tjDecompressHeader3.restype = ctypes.c_int
                _quick = lib
    return _quick


@contextlib.contextmanager
def _decompressor(turbo: Any) -> Iterator[object]:
    """A fresh libjpeg-turbo decompressor for one image."""
    quick = _held_lock_calls(turbo)
    handle = quick.tjInitDecompress()
    if not handle:
        raise OSError("libjpeg-turbo could not make a decompressor")
    try:
        yield handle
    finally:
        quick.tjDestroy(handle)


def _read_header(turbo: Any, handle: object, src: npt.NDArray[np.uint8]) -> tuple[int, int]:
    width, height, subsample, colorspace = c_int(), c_int(), c_int(), c_int()
    status = _held_lock_calls(turbo).tjDecompressHeader3(
        handle,
        turbo._TurboJPEG__getaddr(src),
        src.size,
        byref(width),
        byref(height),
        byref(subsample),
        byref(colorspace),
    )
    if status != 0:
        turbo._TurboJPEG__report_error(handle)
    return width.value, height.value


def jpeg_size(turbo: Any, data: bytes) -> tuple[int, int]:
    """A JPEG's width and height, read by libjpeg-turbo without letting go of the interpreter
    lock (_held_lock_calls); raises as PyTurboJPEG's decode_header does."""
    src = np.frombuffer(data, dtype=np.uint8)
    with _decompressor(turbo) as handle:
        return _read_header(turbo, handle, src)


def jpeg_rgb(turbo: Any, data: bytes, num: int, den: int) -> npt.NDArray[np.uint8]:
    """PyTurboJPEG's decode(data, TJPF_RGB, scaling_factor=(num, den)) — the same pixels and
    the same errors — with one hand-over of the interpreter lock instead of four
    (_held_lock_calls)."""
    src = np.frombuffer(data, dtype=np.uint8)
    with _decompressor(turbo) as handle:
        width, height = _read_header(turbo, handle, src)
        width, height = -(-width * num // den), -(-height * num // den)  # libjpeg's TJSCALED
        out = np.empty((height, width, 3), dtype=np.uint8)
        status = turbo._TurboJPEG__decompress(
            handle,
            turbo._TurboJPEG__getaddr(src),
            src.size,
            turbo._TurboJPEG__getaddr(out),
            width,
            0,
            height,
            _TJPF_RGB,
            0,
        )
        if status != 0:
            turbo._TurboJPEG__report_error(handle)
        return out


def turbojpeg_available() -> bool:
    return _turbojpeg() is not None


def decode_jpeg_scaled(
    data: bytes, im: Image.Image, num: int, den: int
) -> npt.NDArray[np.uint8] | None:
    """Decode with libjpeg-turbo at a DCT scale, to an H×W×3 RGB array. None where
    libjpeg-turbo cannot do it (CMYK, an unsupported process, no library): the caller falls
    back to Pillow. A damaged file is an ImageDecodeError."""
    turbo = _turbojpeg()
    if turbo is None or im.mode not in ("RGB", "L"):
        return None
    try:
        rgb = jpeg_rgb(turbo, data, num, den)
    except DamagedJpegError as exc:
        raise ImageDecodeError(f"damaged JPEG ({exc}); the picture is incomplete") from None
    except Exception:  # a fatal error: Pillow decides, in its own words
        return None
    return rgb


# -- sniffing formats we do not decode ------------------------------------------------------
_ISO_BMFF_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}


def _jpeg_precision(data: bytes) -> int | None:
    """Sample precision from the first SOFn marker (8 for almost every JPEG; 12 or 16 for
    medical and some raw-converter output, which Pillow and libjpeg-turbo 2 cannot read)."""
    pos, end = 2, min(len(data), 1 << 20)
    while pos + 9 < end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return data[pos + 4]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def sniff_unsupported_format(data: bytes) -> str | None:
    head = data[:512]
    if head.startswith(b"\xff\xd8") and (precision := _jpeg_precision(data)) not in (None, 8):
        return f"{precision}-bit JPEG"
    if head[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(head[8:12], "ISO media (MP4/MOV/HEIF family)")
    if head.startswith(b"%PDF"):
        return "PDF"
    stripped = head.lstrip().lower()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in stripped):
        return "SVG"
    if head.startswith(b"\xff\x0a") or head[4:12] == b"jxl \r\n\x87\n":
        return "JPEG XL"
    return None


def _unsupported(
    name: str, formats: tuple[str, ...] = SUPPORTED_FORMATS
) -> UnsupportedImageFormatError:
    return UnsupportedImageFormatError(
        f"unsupported image format {name}; supported formats: {', '.join(formats)}"
    )


def open_image(
    data: bytes, max_pixels: int, formats: tuple[str, ...] = SUPPORTED_FORMATS
) -> Image.Image:
    """Open lazily (header only) and refuse what we cannot or will not decode."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if (name := sniff_unsupported_format(data)) is not None:
            raise _unsupported(name, formats) from None
        raise ImageDecodeError(
            "not a recognized image; supported formats: " + ", ".join(formats)
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image has too many pixels to decode safely: {exc}") from None
    except Exception as exc:  # a header parser's failure, whatever its type
        if formats == SUPPORTED_FORMATS and (name := sniff_unsupported_format(data)) is not None:
            raise _unsupported(name, formats) from None
        raise ImageDecodeError(f"cannot read image: {exc}") from None
    fmt = "JPEG" if im.format == "MPO" else im.format
    if fmt not in formats:
        raise _unsupported(str(im.format), formats)
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image has too many pixels: {width}x{height} = {width * height}, more than the "
            f"limit of {max_pixels}"
        )
    return im


def declared_pixels(data: bytes) -> int | None:
    """Width × height from the header alone, or None when there is no header we read: decide
    where to decode before paying for it. A JPEG's header is read by libjpeg-turbo (about 20 µs;
    Pillow's Python parser takes about 60, and the decode opens the file with Pillow again);
    whatever libjpeg-turbo refuses is left to Pillow."""
    turbo = _turbojpeg() if data[:2] == b"\xff\xd8" else None
    if turbo is not None:
        try:
            width, height = jpeg_size(turbo, data)
            if width > 0 and height > 0:
                return int(width) * int(height)
        except Exception:  # a damaged or unusual header: Pillow decides below
            pass
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception:  # anything unreadable: the decode itself reports it properly
        return None
    return width * height


def is_jpeg(im: Image.Image) -> bool:
    return im.format in JPEG_FORMATS


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 when absent or unreadable). Never decodes pixels: call it
    on a JPEG (EXIF is in its header) or after the image was decoded — Pillow loads a PNG's
    pixels to look for an eXIf chunk after them, and a failure there must surface as the
    decode's error, not be swallowed here."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not make a readable photo fail
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation >= 5 else (width, height)


def make_upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation, as ImageOps.exif_transpose does."""
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    return image if transpose is None else image.transpose(transpose)


def make_upright_array(pixels: npt.NDArray[np.uint8], orientation: int) -> npt.NDArray[np.uint8]:
    """make_upright for an H×W×C array: the same eight transposes, as numpy views."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


# -- memory ----------------------------------------------------------------------------------
# Bytes per pixel of a Pillow image in memory by mode (Pillow keeps RGB as 4 bytes per pixel).
_PILLOW_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
# Decoders that fill a buffer of their own before Pillow copies it (libwebp; its animation
# decoder composites every frame onto an RGBA canvas): bytes per pixel on top.
_CODEC_BUFFER_BYTES = {"WEBP": 12}
MIB = 1 << 20


def decode_cost(im: Image.Image, scale: tuple[int, int] | None = None) -> int:
    """Bytes a decode of `im` may take at its peak, from its declared size alone: the decoded
    image in Pillow's layout, a codec's own buffer, and the RGB conversion; at a DCT scale,
    libjpeg-turbo's RGB output and Pillow's copy (or Pillow's draft of a CMYK file). With a
    10 % margin; tests/test_imaging.py checks it against measured peaks for each format."""
    width, height = im.size
    if scale is not None:
        num, den = scale
        pixels = math.ceil(width * num / den) * math.ceil(height * num / den)
        per_pixel = 3 + 4
    else:
        pixels = width * height
        native = _PILLOW_BYTES_PER_PIXEL.get(im.mode, 4)
        per_pixel = native + _CODEC_BUFFER_BYTES.get(str(im.format), 0)
        if im.mode != "RGB":
            per_pixel += 4  # the RGB copy
    return int(1.1 * pixels * per_pixel) + 2 * MIB


def pillow_rgb(im: Image.Image, min_size: tuple[int, int] | None = None) -> Image.Image:
    """The first frame as RGB, decoded once by Pillow; any failure is an ImageDecodeError.
    With `min_size`, a JPEG is decoded at the smallest DCT scale that still covers it."""
    try:
        im.seek(0)
        if min_size is not None and is_jpeg(im):
            im.draft("RGB", min_size)
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except MemoryError:
        raise ImageTooLargeError("not enough memory to decode this image") from None
    except Exception as exc:  # Pillow's decoders raise many types; none may escape as a 500
        raise ImageDecodeError(f"cannot decode image: {exc or type(exc).__name__}") from None


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels as stored (not yet upright), possibly DCT-scaled. libjpeg-turbo hands
    back a numpy array and Pillow an Image; each becomes the other only when a caller asks
    (a copy either way), so a path that stays in numpy never builds a Pillow image."""

    decoded: Image.Image | npt.NDArray[np.uint8]  # RGB
    orientation: int  # EXIF, 1-8
    size: tuple[int, int]  # the stored image's declared width and height

    @cached_property
    def rgb(self) -> Image.Image:
        if isinstance(self.decoded, Image.Image):
            return self.decoded
        return Image.fromarray(self.decoded, "RGB")

    @cached_property
    def array(self) -> npt.NDArray[np.uint8]:
        """H×W×3 uint8."""
        if isinstance(self.decoded, Image.Image):
            return np.asarray(self.decoded, dtype=np.uint8)
        return self.decoded

    @property
    def decoded_width(self) -> int:
        d = self.decoded
        return d.width if isinstance(d, Image.Image) else int(d.shape[1])

    @property
    def scale(self) -> float:
        """Decoded size ÷ declared size."""
        return self.decoded_width / self.size[0]

    @property
    def upright_size(self) -> tuple[int, int]:
        return upright_size(*self.size, self.orientation)


@contextlib.contextmanager
def decoded_rgb(
    data: bytes,
    limits: DecodeLimits,
    formats: tuple[str, ...] = SUPPORTED_FORMATS,
    dct_scale: Callable[[int, int], tuple[int, int]] | None = None,
) -> Iterator[DecodedImage]:
    """Decode `data` to RGB within the limits; the memory stays reserved in the budget until
    the block ends, so the caller reduces the image to what it keeps inside the block.
    `dct_scale(width, height)` picks a JPEG's DCT scale (none: full size)."""
    im = open_image(data, limits.max_pixels, formats)
    scale = dct_scale(*im.size) if dct_scale is not None and is_jpeg(im) else None
    with _admitted(limits, decode_cost(im, scale)):
        rgb: Image.Image | npt.NDArray[np.uint8] | None = None
        if scale is not None:
            rgb = decode_jpeg_scaled(data, im, *scale)
            if rgb is None:  # libjpeg-turbo cannot: Pillow, at the same scale
                num, den = scale
                rgb = pillow_rgb(
                    im, (math.ceil(im.width * num / den), math.ceil(im.height * num / den))
                )
        if rgb is None:
            rgb = pillow_rgb(im)
        # After the decode: reading a PNG's EXIF may decode it, and that must happen once.
        yield DecodedImage(rgb, exif_orientation(im), im.size)


def _admitted(limits: DecodeLimits, nbytes: int) -> contextlib.AbstractContextManager[None]:
    return limits.budget.reserve(nbytes) if limits.budget is not None else contextlib.nullcontext()
