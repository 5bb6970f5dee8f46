"""What can be wrong with an image a client sent; every message is safe to show to the client."""

from __future__ import annotations


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read (422)."""


class UnsupportedImageFormatError(ImageDecodeError):
    """A real image in a format we do not decode: HEIC, AVIF, SVG, PDF, ... (415)."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than allowed, or needs more memory to decode than the
    decode budget (413): refused before decoding."""
