"""Slow, abusive and vanishing clients, and a drain Photofield survives — on a real server.

Each case: the connection is bounded as documented, nothing a client did is counted as a 5xx
or logged at ERROR, and the requests beside it are unaffected.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, server_errors, start_server
from tests.face_fakes import fake_faces_env
from tests.images import jpeg
from tests.probes import parse_metric

TIMEOUTS = {
    "PHOTOFIELD_AI_HEADER_TIMEOUT_S": "1",
    "PHOTOFIELD_AI_BODY_TIMEOUT_S": "1",
    "PHOTOFIELD_AI_KEEP_ALIVE_S": "2",
    "PHOTOFIELD_AI_MAX_CONNECTIONS": "12",
}


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, tiny_float32: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("strict")
    srv = start_server(
        folder,
        *tiny_float32,
        **TIMEOUTS,
        **fake_faces_env(folder),
    )
    yield srv
    srv.stop()
    errors = server_errors(srv)
    assert errors == [], "\n".join(errors)


def metric(srv: ServerProcess, name: str, **labels: str) -> float:
    return parse_metric(httpx.get(srv.url + "/metrics").text, name, **labels)


def connect(srv: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
    sock.settimeout(10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed."""
    started, data = time.monotonic(), b""
    sock.settimeout(seconds)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {seconds} s; got {data[:80]!r}") from None
    return data, time.monotonic() - started


def no_server_errors(srv: ServerProcess) -> None:
    text = httpx.get(srv.url + "/metrics").text
    assert 'status="5' not in text, [line for line in text.splitlines() if 'status="5' in line]


def test_dripping_headers_get_408_and_are_closed(strict: ServerProcess) -> None:
    before = metric(strict, "photofield_ai_http_connections_closed_total", reason="header_timeout")
    with connect(strict) as sock:
        sock.sendall(b"POST /text-emb")
        started = time.monotonic()
        for byte in b"eddings HTTP/1.1\r\n":  # one byte every 0.2 s: never done in time
            if time.monotonic() - started > 3:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        data, _ = closed_within(sock, 5)
    assert data.startswith(b"HTTP/1.1 408")
    after = metric(strict, "photofield_ai_http_connections_closed_total", reason="header_timeout")
    assert after == before + 1
    no_server_errors(strict)


def test_an_idle_socket_is_closed(strict: ServerProcess) -> None:
    with connect(strict) as sock:
        _, seconds = closed_within(sock, 5)
    assert 0.8 <= seconds <= 3


def test_a_stalled_body_is_closed_and_counted_as_the_clients(strict: ServerProcess) -> None:
    before = metric(strict, "photofield_ai_http_connections_closed_total", reason="body_timeout")
    with connect(strict) as sock:
        sock.sendall(
            b"POST /image-embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        closed_within(sock, 5)
    after = metric(strict, "photofield_ai_http_connections_closed_total", reason="body_timeout")
    assert after == before + 1
    no_server_errors(strict)


def test_keep_alive_connections_close_when_idle(strict: ServerProcess) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data, seconds = closed_within(sock, 6)
    assert data.startswith(b"HTTP/1.1 200") and 1.5 <= seconds <= 4


def _upload(path: str, body: bytes, content_type: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) + 100_000}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("path", ["/image-embeddings", "/text-embeddings", "/faces"])
def test_a_client_that_vanishes_mid_upload_is_not_a_server_error(
    strict: ServerProcess, path: str
) -> None:
    """Half a body, then the client is gone — while other clients' requests run beside it."""
    before = metric(strict, "photofield_ai_http_client_disconnects_total", endpoint=path)
    photo = jpeg(320, 240)

    async def neighbours() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            requests = [
                client.post(strict.url + "/image-embeddings", files={"image": ("a.jpg", photo)})
                for _ in range(4)
            ] + [client.post(strict.url + "/text-embeddings", json={"texts": ["hawk"]})]
            return [r.status_code for r in await asyncio.gather(*requests)]

    if path == "/text-embeddings":
        head = b'{"texts": ["half a te'
        content_type = "application/json"
    else:
        head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        head += photo[:5000]
        content_type = "multipart/form-data; boundary=b"
    sock = connect(strict)
    sock.sendall(_upload(path, head, content_type))
    time.sleep(0.2)
    sock.close()
    assert asyncio.run(neighbours()) == [200] * 5
    deadline = time.monotonic() + 5
    while metric(strict, "photofield_ai_http_client_disconnects_total", endpoint=path) < before + 1:
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.05)
    no_server_errors(strict)


def test_connections_beyond_the_cap_get_503_and_are_closed(strict: ServerProcess) -> None:
    held = [connect(strict) for _ in range(12)]
    try:
        time.sleep(0.2)
        extra = connect(strict)
        data, _ = closed_within(extra, 5)
        assert data.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in data.lower()
        extra.close()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(strict.url + "/health").status_code == 200


# -- a drain Photofield survives -----------------------------------------------------------------
def test_sigterm_under_photofield_load_loses_nothing_and_faces_never_fail(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    """Thumbnails, /faces and searches keep coming after SIGTERM (endpoints take a while to be
    removed): everything that arrives during the delay is answered 200 — /faces above all —
    and the answers say `Connection: close`; then the server exits 0."""
    srv = start_server(
        tmp_path,
        *tiny_float32,
        PHOTOFIELD_AI_SHUTDOWN_DELAY_S="2",
        **fake_faces_env(tmp_path),
    )
    thumbnail, original = jpeg(256, 192), jpeg(1600, 1200)
    statuses: dict[str, list[int]] = {"thumbnails": [], "faces": [], "search": []}
    closes: list[str] = []

    async def client(kind: str, stop_at: float) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while time.monotonic() < stop_at:
                if kind == "thumbnails":
                    r = await http.post(
                        srv.url + "/image-embeddings", files={"image": ("t", thumbnail)}
                    )
                elif kind == "faces":
                    r = await http.post(srv.url + "/faces", files={"image": ("o", original)})
                else:
                    r = await http.post(srv.url + "/text-embeddings", json={"texts": ["hawk"]})
                statuses[kind].append(r.status_code)
                closes.append(r.headers.get("connection", ""))

    async def scenario() -> None:
        stop_at = time.monotonic() + 2.5  # SIGTERM at 1 s; the delay lasts until 3 s
        tasks = [
            *(client("thumbnails", stop_at) for _ in range(4)),
            *(client("faces", stop_at) for _ in range(2)),
            client("search", stop_at),
        ]
        gathered = asyncio.gather(*tasks)
        await asyncio.sleep(1.0)
        srv.process.send_signal(signal.SIGTERM)
        await gathered

    asyncio.run(scenario())
    assert srv.process.wait(60) == 0
    assert all(statuses.values()), statuses
    for kind, codes in statuses.items():
        assert set(codes) == {200}, (kind, codes)
    assert "close" in closes, "answers after SIGTERM should tell clients to reconnect"
