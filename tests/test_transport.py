"""api.transport: a response's head and body leave in one write. On real transports (a socket
pair on asyncio's loop and on uvloop's, which the server runs; the server itself), with the
inner transport's writes counted by a pass-through."""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from photofield_ai.api import server as server_module
from photofield_ai.api.transport import CoalescingTransport
from photofield_ai.app import create_app
from photofield_ai.config import Settings
from photofield_ai.serving.loading import LoadedModels
from photofield_ai.testing.server import serve_in_thread
from tests.conftest import CPU, clip_model
from tests.images import jpeg
from tests.test_priority import multipart_image


class CountedWrites:
    """A real transport, with each write it is asked for recorded."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


Scenario = Callable[[CoalescingTransport, CountedWrites], Awaitable[None]]
Loop = Callable[[Awaitable[list[bytes]]], list[bytes]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run_loop(request: pytest.FixtureRequest) -> Loop:
    """How a scenario's event loop runs: asyncio's own, or uvloop's (the server's)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run  # type: ignore[return-value]


def on_socket_pair(scenario: Scenario, run_loop: Loop) -> tuple[list[bytes], bytes]:
    """Run `scenario` on a CoalescingTransport over one end of a socket pair; the inner
    transport's writes and every byte the other end received."""
    ours, theirs = socket.socketpair()

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        _, writer = await asyncio.open_connection(sock=ours)
        counted = CountedWrites(writer.transport)  # type: ignore[arg-type]
        await scenario(CoalescingTransport(counted, loop), counted)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        return counted.writes

    try:
        writes = run_loop(run())
        theirs.settimeout(2)
        received = b""
        try:
            while chunk := theirs.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return writes, received
    finally:
        theirs.close()


def test_head_and_body_leave_in_one_write(run_loop: Loop) -> None:
    async def scenario(transport: CoalescingTransport, counted: CountedWrites) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert counted.writes == []  # held until the body comes
        transport.write(b"{}")
        transport.close()

    writes, received = on_socket_pair(scenario, run_loop)
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert received == writes[0]


def test_a_lone_write_leaves_at_the_end_of_the_turn(run_loop: Loop) -> None:
    async def scenario(transport: CoalescingTransport, counted: CountedWrites) -> None:
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        assert counted.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        transport.close()

    writes, received = on_socket_pair(scenario, run_loop)
    assert received == b"HTTP/1.1 100 Continue\r\n\r\n" and len(writes) == 1


def test_streamed_chunks_keep_their_order_and_bytes(run_loop: Loop) -> None:
    chunks = [b"head;", b"one;", b"two;", b"three"]

    async def scenario(transport: CoalescingTransport, counted: CountedWrites) -> None:
        for chunk in chunks:
            transport.write(chunk)
        await asyncio.sleep(0)
        transport.write(b";later")
        transport.close()

    writes, received = on_socket_pair(scenario, run_loop)
    assert received == b"".join(chunks) + b";later"
    assert writes == [b"head;one;", b"two;three", b";later"]


def test_close_writes_what_is_held_and_abort_drops_it(run_loop: Loop) -> None:
    async def closed(transport: CoalescingTransport, counted: CountedWrites) -> None:
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        transport.close()
        assert transport.is_closing()

    async def aborted(transport: CoalescingTransport, counted: CountedWrites) -> None:
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)  # the turn's flush finds nothing held

    assert on_socket_pair(closed, run_loop)[1] == b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
    assert on_socket_pair(aborted, run_loop) == ([], b"")


def test_nothing_is_written_to_a_connection_already_closing(run_loop: Loop) -> None:
    async def scenario(transport: CoalescingTransport, counted: CountedWrites) -> None:
        transport.write(b"held")
        counted.inner.close()  # the peer went away; uvicorn closes the real transport
        transport.flush()

    assert on_socket_pair(scenario, run_loop) == ([], b"")


def test_every_keep_alive_response_is_one_write(
    tiny_float32: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real server (uvicorn, the app, a thumbnail, a search, an error): each
    response reaches the socket in one write — head, headers and body together."""
    counted: list[CountedWrites] = []

    def coalescing(transport: asyncio.Transport, loop: Any) -> CoalescingTransport:
        counted.append(CountedWrites(transport))
        return CoalescingTransport(counted[-1], loop)  # type: ignore[arg-type]

    monkeypatch.setattr(server_module, "CoalescingTransport", coalescing)
    models = LoadedModels(
        CPU, clip_model(tiny_float32[0], "visual"), clip_model(tiny_float32[1], "textual")
    )
    app = create_app(Settings(), models)
    body, content_type = multipart_image(jpeg(256, 192))
    with serve_in_thread(app) as url:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        statuses = []
        for path, payload, kind in [
            ("/image-embeddings", body, content_type),
            ("/text-embeddings", b'{"texts": ["beach sunset"]}', "application/json"),
            ("/text-embeddings", b'{"texts": 5}', "application/json"),
        ]:
            connection.request("POST", path, payload, {"Content-Type": kind})
            response = connection.getresponse()
            statuses.append((response.status, response.read()))
        connection.close()
    assert [s for s, _ in statuses] == [200, 200, 400]
    (ours,) = [c.writes for c in counted if any(b'"images"' in w for w in c.writes)]
    assert len(ours) == 3, [w[:80] for w in ours]
    for write, (status, answer) in zip(ours, statuses, strict=True):
        assert write.startswith(f"HTTP/1.1 {status} ".encode())
        assert write.split(b"\r\n\r\n", 1)[1] == answer
