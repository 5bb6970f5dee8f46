"""A fast path for the multipart bodies real clients send: well-formed, file parts only.

Photofield posts one small file per request, thousands of times a minute; python-multipart's
callback parser and Starlette's spooled temporary files cost more CPU than the rest of the HTTP
handling. This parser slices the buffered body with `bytes.find` and accepts only what it fully
understands: one boundary, parts with a `form-data` disposition, a quoted field name and a quoted
file name, CRLF everywhere, at most `max_parts` parts. Anything else returns None and the general
parser (Starlette's) decides — with its own error messages — so answers never depend on which
parser ran.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class FilePart:
    field: str
    filename: str | None
    data: bytes


_BOUNDARY = re.compile(rb'boundary=(?:"([^"\r\n]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
# name="…"; filename="…" with nothing escaped or encoded inside the quotes (RFC 7578 clients).
_DISPOSITION = re.compile(
    rb'^content-disposition:[ \t]*form-data[ \t]*;[ \t]*name="([^"\\\r\n]*)"'
    rb'[ \t]*;[ \t]*filename="([^"\\\r\n]*)"[ \t]*$',
    re.IGNORECASE,
)
_OTHER_HEADER = re.compile(rb"^(content-type|content-transfer-encoding):[^\r\n]*$", re.IGNORECASE)


def boundary_of(content_type: str) -> bytes | None:
    match = _BOUNDARY.search(content_type.encode("latin-1", "replace"))
    return (match.group(1) or match.group(2)) if match else None


def parse_file_parts(body: bytes, content_type: str, max_parts: int) -> list[FilePart] | None:
    """The file parts of a well-formed body, or None to let the general parser decide."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + b"\r\n"):
        return None
    parts: list[FilePart] = []
    position = len(delimiter) + 2
    separator = b"\r\n" + delimiter
    while True:
        headers_end = body.find(b"\r\n\r\n", position)
        if headers_end < 0:
            return None
        field = filename = None
        for line in body[position:headers_end].split(b"\r\n"):
            if (match := _DISPOSITION.match(line)) is not None and field is None:
                field, filename = match.group(1), match.group(2)
            elif _OTHER_HEADER.match(line) is None:
                return None
        if field is None or filename is None:
            return None  # a text field, or a header we do not read: not the fast path's case
        end = body.find(separator, headers_end + 4)
        if end < 0:
            return None
        try:
            part = FilePart(field.decode(), filename.decode(), body[headers_end + 4 : end])
        except UnicodeDecodeError:
            return None  # the general parser has its own fallback for such names
        parts.append(part)
        if len(parts) > max_parts:
            return None
        position = end + len(separator)
        tail = body[position : position + 2]
        if tail == b"--":
            return parts if body[position + 2 :] in (b"", b"\r\n") else None
        if tail != b"\r\n":
            return None
        position += 2
