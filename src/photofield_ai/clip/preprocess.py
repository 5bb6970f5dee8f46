"""CLIP image preprocessing: decode, upright, resize, center crop, normalize.

The geometry is torchvision's `Resize(S)` + `CenterCrop(S)` as the original service used, but the
fast path computes it from the original dimensions and resizes only the crop box out of a JPEG
decoded at a libjpeg-turbo DCT scale. That keeps a 12-megapixel photo from ever being fully
decoded and a 1×20000 strip from being resized whole, while staying within a rounding error of the
reference (full decode + full resize + crop, kept here for tests).
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Formats Pillow decodes for us here; everything else is answered with 415.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
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

_SCALE = (1.0 / (255.0 * np.asarray(CLIP_STD, dtype=np.float32))).astype(np.float32)
_BIAS = (-np.asarray(CLIP_MEAN, dtype=np.float32) / np.asarray(CLIP_STD, dtype=np.float32)).astype(
    np.float32
)


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read; the message is safe to show to the client."""


class UnsupportedImageFormatError(ImageDecodeError):
    """A real image in a format we do not decode (HEIC, AVIF, SVG, PDF, ...)."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than allowed: refused before decoding (decompression bomb)."""


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


def crop_geometry(width: int, height: int, size: int) -> CropGeometry:
    """The center crop of the resized image, mapped back into the original's coordinates.

    Offsets are rounded as torchvision's `center_crop` does (round((resized - size) / 2)).
    """
    rw, rh = resized_size(width, height, size)
    left = round((rw - size) / 2.0)
    top = round((rh - size) / 2.0)
    sx, sy = width / rw, height / rh
    return CropGeometry(left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def dct_scale_covering(length: int, size: int) -> tuple[int, int]:
    """The smallest libjpeg-turbo scale that still leaves `length` pixels at least `size`."""
    for num, den in _DCT_SCALES:
        if math.ceil(length * num / den) >= size:
            return num, den
    return 1, 1


def choose_dct_scale(width: int, height: int, size: int) -> tuple[int, int]:
    """The smallest libjpeg-turbo scale that still leaves the shorter side at least `size`.

    Never below `size`: upsampling a DCT-scaled image loses detail the model would have seen.
    """
    return dct_scale_covering(min(width, height), size)


def normalize(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """HWC uint8 RGB → CHW float32 normalized with CLIP's mean and std."""
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    chw *= _SCALE[:, None, None]
    chw += _BIAS[:, None, None]
    return chw


_turbo_lock = threading.Lock()
_turbo: object | None = None


def _turbojpeg() -> object | None:
    """The shared TurboJPEG handle, or None when libturbojpeg is not installed (Pillow is used)."""
    global _turbo
    if _turbo is None:
        with _turbo_lock:
            if _turbo is None:
                try:
                    from turbojpeg import TurboJPEG

                    class StrictTurboJPEG(TurboJPEG):  # type: ignore[misc]
                        """PyTurboJPEG only *warns* on a truncated or corrupt JPEG and returns
                        grey-filled pixels. Raise instead, so that such files take the Pillow
                        path, which decodes the merely-odd ones and refuses the broken ones.
                        (PyTurboJPEG 1.x's private hook; the version is pinned below 2.)"""

                        def _TurboJPEG__report_error(self, handle: object) -> None:
                            raise OSError(self._TurboJPEG__get_error_string(handle))

                    _turbo = StrictTurboJPEG()
                except (OSError, RuntimeError, ImportError):
                    _turbo = False
    return _turbo or None


def turbojpeg_available() -> bool:
    return _turbojpeg() is not None


# Formats people have in photo libraries that we do not decode, recognized by their first bytes so
# the client hears "unsupported format X" (415) rather than "not an image".
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
    except (OSError, ValueError, SyntaxError, RuntimeError) as exc:
        if formats == SUPPORTED_FORMATS and (name := sniff_unsupported_format(data)) is not None:
            raise _unsupported(name, formats) from None
        raise ImageDecodeError(f"cannot read image: {exc}") from None
    if im.format not in formats:
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


def exif_orientation(im: Image.Image) -> int:
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


def decode_jpeg_scaled(
    data: bytes, im: Image.Image, num: int, den: int
) -> tuple[Image.Image, float] | None:
    """Decode with libjpeg-turbo at a DCT scale; None where turbojpeg cannot do it (CMYK, ...)."""
    turbo = _turbojpeg()
    if turbo is None or im.mode not in ("RGB", "L"):
        return None
    from turbojpeg import TJPF_RGB

    try:
        rgb = turbo.decode(data, pixel_format=TJPF_RGB, scaling_factor=(num, den))  # type: ignore[attr-defined]
    except Exception:  # defer to Pillow, which reports the error in its own words
        return None
    return Image.fromarray(rgb, "RGB"), num / den


def pillow_rgb(im: Image.Image) -> Image.Image:
    try:
        im.seek(0)
        im.load()
        return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from None


def decode_and_crop(
    data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.uint8]:
    """Image bytes → upright S×S×3 uint8 RGB crop, the fast way."""
    im = open_image(data, max_pixels)
    orientation = exif_orientation(im)
    scaled = (
        decode_jpeg_scaled(data, im, *choose_dct_scale(*im.size, size))
        if im.format == "JPEG"
        else None
    )
    if scaled is not None:
        decoded, factor = scaled
    else:
        decoded, factor = pillow_rgb(im), 1.0
    decoded = make_upright(decoded, orientation)
    width, height = upright_size(*im.size, orientation)
    box = crop_geometry(width, height, size).scaled(factor)
    try:
        out = decoded.resize((size, size), Image.Resampling.BICUBIC, box=box)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot resize image: {exc}") from None
    return np.asarray(out, dtype=np.uint8)


def preprocess_image(
    data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.float32]:
    """Image bytes → the CLIP visual model's [3, S, S] float32 input."""
    return normalize(decode_and_crop(data, size, max_pixels))


def reference_decode_and_crop(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    """The slow, obviously-correct path: full Pillow decode, Resize(S), CenterCrop(S)."""
    im = Image.open(io.BytesIO(data))
    orientation = exif_orientation(im)
    rgb = pillow_rgb(im)
    rgb = make_upright(rgb, orientation)
    rw, rh = resized_size(rgb.width, rgb.height, size)
    resized = rgb.resize((rw, rh), Image.Resampling.BICUBIC)
    left = round((rw - size) / 2.0)
    top = round((rh - size) / 2.0)
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
