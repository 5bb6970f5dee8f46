"""The multipart fast path: what it accepts it parses exactly as Starlette's parser does, and
everything else it leaves to that parser."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import UploadFile
from starlette.requests import Request

from photofield_ai.api.multipart import FilePart, boundary_of, parse_file_parts
from tests.corpus import Case, cases


def general(body: bytes, content_type: str) -> list[FilePart] | None:
    """Starlette's parse of the body (None when it refuses it or finds a text field)."""

    async def parse() -> list[FilePart] | None:
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "headers": [(b"content-type", content_type.encode("latin-1"))],
        }
        try:
            form = await Request(scope, receive).form(max_files=1000, max_fields=1000)
        except Exception:
            return None
        parts = []
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                return None
            parts.append(FilePart(field, value.filename, await value.read()))
        return parts

    return asyncio.run(parse())


# Names a client can send in a quoted parameter (no quote, backslash or line break; valid text).
NAME_CHARS = st.characters(exclude_characters='"\\\r\n', exclude_categories=["Cs"])


def encoded(files: list[tuple[str, tuple[str, bytes]]]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files)
    return request.read(), request.headers["content-type"]


def test_the_usual_request_takes_the_fast_path() -> None:
    body, content_type = encoded([("image", ("heavy-industry.jpg", b"\xff\xd8data\r\n--x"))])
    parts = parse_file_parts(body, content_type, 64)
    assert parts == [FilePart("image", "heavy-industry.jpg", b"\xff\xd8data\r\n--x")]
    assert parts == general(body, content_type)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(
                NAME_CHARS,
                min_size=1,
                max_size=12,
            ),
            st.text(
                NAME_CHARS,
                max_size=12,
            ),
            st.binary(max_size=300),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_fast_path_agrees_with_starlette(parts: list[tuple[str, str, bytes]]) -> None:
    body, content_type = encoded([(f, (n or "x", d)) for f, n, d in parts])
    fast = parse_file_parts(body, content_type, 64)
    if fast is not None:
        assert fast == general(body, content_type)


@pytest.mark.parametrize(
    "case", [c for c in cases() if c.content is not None], ids=lambda c: c.name
)
def test_corpus_bodies_fast_path_never_disagrees(case: Case) -> None:
    assert case.content is not None
    content, content_type = case.content, case.headers.get("Content-Type", "")
    fast = parse_file_parts(content, content_type, 4)
    if fast is not None:
        assert fast == general(content, content_type)


DISPOSITION = b'Content-Disposition: form-data; name="a"; filename="a"'


@pytest.mark.parametrize(
    "body",
    [
        b"preamble\r\n--b\r\n" + DISPOSITION + b"\r\n\r\nx\r\n--b--",
        b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--b--',  # text field
        b'--b\r\nContent-Disposition: form-data; filename="a"; name="a"\r\n\r\nx\r\n--b--',
        b"--b\r\nX-Other: 1\r\n" + DISPOSITION + b"\r\n\r\nx\r\n--b--",
        b'--b\r\nContent-Disposition: form-data; name="a"; filename="a"\r\n\r\nx\r\n--b',  # no end
        b'--b\r\nContent-Disposition: form-data; name="a"; filename="a"\r\n\r\nx\r\n--b--junk',
    ],
)
def test_anything_unusual_is_left_to_the_general_parser(body: bytes) -> None:
    assert parse_file_parts(body, "multipart/form-data; boundary=b", 64) is None


def test_too_many_parts_are_left_to_the_general_parser_and_its_413() -> None:
    body, content_type = encoded([("image", (f"{i}.jpg", b"x")) for i in range(5)])
    assert parse_file_parts(body, content_type, 4) is None
    assert parse_file_parts(body, content_type, 5) is not None


def test_boundary_forms() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    assert boundary_of("multipart/form-data; charset=x; BOUNDARY=abc") == b"abc"
    assert boundary_of("multipart/form-data") is None
