"""Hostile input, round two, each case against a real server at default settings (face fakes
loaded): no 5xx, no ERROR line a client caused, no stalled connection, memory set by the decode
budget, and a tokenizer that cannot be stalled."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import hostile
from tests.conftest import ServerProcess, server_errors, start_server
from tests.face_fakes import EXPECTED, fake_faces_env
from tests.images import encode, photo
from tests.probes import parse_metric

GIB = 1 << 30


@pytest.fixture(scope="module")
def hostile_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_float32: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("hostile")
    srv = start_server(
        folder,
        *tiny_float32,
        **fake_faces_env(folder),
    )
    yield srv
    srv.stop()
    # Nothing a client sent may be logged as a server error.
    errors = server_errors(srv)
    assert errors == [], "\n".join(errors)


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def peak_growth(pid: int, action: object) -> int:
    """How far the server's peak RSS rose above its RSS at the start of `action`."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = status(pid, "VmRSS")
    assert callable(action)
    action()
    return status(pid, "VmHWM") - before


# -- 1. input that used to produce a 500 ---------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (hostile.deep_json(), "nested too deeply"),
        (b'{"texts": [' + b"9" * 5000 + b"]}", "not valid JSON"),
        (b'{"texts": ["\\ud800 lone surrogate"]}', "unpaired surrogate"),
    ],
    ids=["nesting 100,000 deep", "5000-digit integer", "lone surrogate"],
)
def test_json_that_used_to_be_a_500(
    hostile_server: ServerProcess, body: bytes, needle: str
) -> None:
    r = httpx.post(
        hostile_server.url + "/text-embeddings",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and needle in r.json()["error"], r.text


IMAGES = {
    "truncated interlaced PNG": (hostile.truncated_interlaced_png, 422, "truncated"),
    "PNG with a corrupt IDAT": (hostile.png_with_corrupt_idat, 422, "cannot decode"),
    "JPEG claiming 99.45 Mpx in 1.4 kB": (
        lambda: hostile.jpeg_claiming(9973, 9972),
        422,
        "damaged JPEG",
    ),
    "animated WebP with a 9998² canvas": (hostile.webp_with_huge_canvas, 413, "decode memory"),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_broken_images_are_errors_not_500s_or_half_pictures(
    hostile_server: ServerProcess, name: str
) -> None:
    make, expected, needle = IMAGES[name]
    data = make()
    pid = hostile_server.process.pid
    responses: list[httpx.Response] = []

    def send() -> None:
        responses.append(
            httpx.post(
                hostile_server.url + "/image-embeddings",
                files={"image": ("x", data)},
                timeout=60,
            )
        )
        responses.append(
            httpx.post(hostile_server.url + "/faces", files={"image": ("x", data)}, timeout=60)
        )

    growth = peak_growth(pid, send)
    embeddings, faces = responses
    assert embeddings.status_code == expected and needle in embeddings.json()["error"]
    # /faces: a photo that cannot be read is 200 with no faces and the reason (Photofield turns
    # faces off for an hour on anything else).
    assert faces.status_code == 200 and faces.json()["images"][0]["faces"] == []
    assert needle in faces.headers["X-Photofield-AI-Faces-Error"]
    assert growth < GIB, f"{name}: peak RSS rose by {growth / 2**20:.0f} MiB"


def test_mpo_from_a_camera_is_read_as_its_primary_jpeg(hostile_server: ServerProcess) -> None:
    data = hostile.mpo()
    r = httpx.post(hostile_server.url + "/image-embeddings", files={"image": ("p.mpo", data)})
    assert r.status_code == 200, r.text
    primary = encode(photo(640, 480, seed=1), "JPEG", quality=90)
    alone = httpx.post(
        hostile_server.url + "/image-embeddings", files={"image": ("p.jpg", primary)}
    )
    assert (
        r.json()["images"][0]["embedding_f16_b64"] == alone.json()["images"][0]["embedding_f16_b64"]
    )
    faces = httpx.post(hostile_server.url + "/faces", files={"image": ("p.mpo", data)})
    assert faces.status_code == 200 and len(faces.json()["images"][0]["faces"]) == len(EXPECTED)


def test_faces_error_header_survives_control_characters(hostile_server: ServerProcess) -> None:
    name = "bad\x00\x01\x7f\x1b[31m\r\nname.jpg"
    r = httpx.post(hostile_server.url + "/faces", files={"image": (name, b"not an image")})
    assert r.status_code == 200 and r.json()["images"][0]["faces"] == []
    header = r.headers["X-Photofield-AI-Faces-Error"]
    assert all(" " <= c <= "~" for c in header), header
    assert "not a recognized image" in header


# -- 3. memory set by the budget -----------------------------------------------------------------
def test_concurrent_large_decodes_wait_for_the_budget(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    """Eight 12-Mpx PNGs at once (each ~85 MiB to decode) on eight decode threads against a
    200 MiB budget: all are answered, and the server's peak stays near the budget instead of
    eight decodes' worth."""
    srv = start_server(
        tmp_path,
        *tiny_float32,
        PHOTOFIELD_AI_DECODE_MEMORY_MB="200",
        PHOTOFIELD_AI_DECODE_THREADS="8",
    )
    # A smooth picture: a small file (the bodies do not count much), a full-size decode.
    smooth = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    png = encode(smooth, "PNG")
    assert len(png) < 2**20
    try:

        async def eight() -> list[int]:
            async with httpx.AsyncClient(timeout=120) as client:
                rs = await asyncio.gather(
                    *(
                        client.post(srv.url + "/image-embeddings", files={"image": ("a.png", png)})
                        for _ in range(8)
                    )
                )
                return [r.status_code for r in rs]

        codes: list[int] = []
        growth = peak_growth(srv.process.pid, lambda: codes.extend(asyncio.run(eight())))
        assert codes == [200] * 8
        assert growth < 200 * 2**20 + 150 * 2**20, f"peak rose by {growth / 2**20:.0f} MiB"
    finally:
        srv.stop()


# -- 4. the tokenizer cannot be stalled ----------------------------------------------------------
def test_long_words_do_not_stall_a_search(hostile_server: ServerProcess) -> None:
    """Two 20 kB one-word texts (23 s each before) and a search at the same time: the search is
    answered at about its normal latency."""
    url = hostile_server.url + "/text-embeddings"
    attack = {"texts": [hostile.long_word(20_000, seed=i) for i in range(8)]}

    async def scenario() -> tuple[float, list[int]]:
        async with httpx.AsyncClient(timeout=120) as client:
            attacks = [asyncio.ensure_future(client.post(url, json=attack)) for _ in range(2)]
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            search = await client.post(url, json={"texts": ["hawk"]})
            elapsed = time.perf_counter() - started
            assert search.status_code == 200
            return elapsed, [r.status_code for r in await asyncio.gather(*attacks)]

    elapsed, codes = asyncio.run(scenario())
    assert codes == [200, 200]
    assert elapsed < 1.0, f"a search waited {elapsed:.2f} s behind long words"


def test_text_body_limit(hostile_server: ServerProcess) -> None:
    word = "a" * (2 << 20)
    r = httpx.post(hostile_server.url + "/text-embeddings", json={"texts": [word]})
    assert r.status_code == 413 and "larger than the limit of 1048576" in r.json()["error"]


# -- 5. HTTP framing -----------------------------------------------------------------------------
def _port(srv: ServerProcess) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


@pytest.mark.parametrize("extra_mib", [1, 20, 40])
def test_body_over_the_limit_is_answered_and_the_connection_closed(
    hostile_server: ServerProcess, extra_mib: int
) -> None:
    limit = 64 * 2**20
    declared = limit + extra_mib * 2**20
    with socket.create_connection(("127.0.0.1", _port(hostile_server))) as sock:
        sock.sendall(
            b"POST /image-embeddings HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
        )
        # The client sends what it can, as a real one does, then reads the answer.
        sock.setblocking(False)
        chunk, sent, deadline = b"x" * 65536, 0, time.monotonic() + 20
        while sent < declared and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk[: declared - sent])
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert b"connection: close" in answer.lower()
    deadline = time.monotonic() + 5
    while (
        parse_metric(
            httpx.get(hostile_server.url + "/metrics").text, "photofield_ai_http_requests_in_flight"
        )
        > 1
    ):
        assert time.monotonic() < deadline, "the refused request stayed in flight"
        time.sleep(0.05)


def test_content_length_with_transfer_encoding_closes_the_connection(
    hostile_server: ServerProcess,
) -> None:
    body = b'{"texts": ["a"]}'
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(hostile_server))) as sock:
        sock.sendall(
            b"POST /text-embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
            + smuggled
        )
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400")
    assert answer.count(b"HTTP/1.1 ") == 1, "the smuggled request was served"


def _server_sockets_in_state(port: int, state: str) -> int:
    """Sockets on the server's port in a TCP state (hex code, /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state:
            count += 1
    return count


def test_closed_keep_alive_connections_do_not_linger_in_close_wait(
    hostile_server: ServerProcess,
) -> None:
    port = _port(hostile_server)
    for _ in range(20):
        with httpx.Client() as client:
            assert client.get(hostile_server.url + "/health").status_code == 200
    time.sleep(0.5)
    assert _server_sockets_in_state(port, "08") == 0  # 08: CLOSE_WAIT
