"""The multi-process server's frames on a real Unix socket pair: many frames in one read, one
frame split over many reads, and a turn's frames leaving in one write; the workers' request
counts as the inference process sees them."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from photofield_ai.config import Settings
from photofield_ai.metrics import Metrics
from photofield_ai.serving import ipc
from photofield_ai.serving.engine import Engine
from photofield_ai.serving.inference import InferenceServer
from photofield_ai.serving.loading import load_models
from photofield_ai.serving.remote import InferenceClient
from tests.conftest import wait_until_async

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def connected_pair() -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter
]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader_a, writer_a = await asyncio.open_unix_connection(sock=a)
    reader_b, writer_b = await asyncio.open_unix_connection(sock=b)
    return reader_a, writer_a, reader_b, writer_b


async def test_every_frame_arrives_whole_and_in_order_however_the_bytes_are_cut() -> None:
    _, writer, reader, other = await connected_pair()
    frames = [ipc.submit(i, i % 3, list(range(i % 5))) for i in range(200)]
    frames.append(ipc.result(7, ipc.FAILED, "é" * 40_000))  # larger than one read
    stream = b"".join(frames)
    # Cut the stream everywhere: inside the length, the kind, the body, at frame boundaries.
    for start in range(0, len(stream), 7):
        writer.write(stream[start : start + 7])
        await writer.drain()
    received: list[tuple[int, bytes]] = []
    frame_reader = ipc.FrameReader(reader)
    while len(received) < len(frames):
        received += await asyncio.wait_for(frame_reader.available(), 5)
    for i, (kind, body) in enumerate(received[:-1]):
        assert kind == ipc.SUBMIT and ipc.read_submit(body) == (i, i % 3, list(range(i % 5)))
    kind, body = received[-1]
    assert kind == ipc.RESULT and ipc.read_result(body) == (7, ipc.FAILED, "é" * 40_000)
    writer.close()
    other.close()


async def test_next_takes_one_frame_and_keeps_the_rest() -> None:
    _, writer, reader, other = await connected_pair()
    writer.write(ipc.hello("worker-0", "slab") + ipc.cancel(5) + ipc.cancel(6))
    frame_reader = ipc.FrameReader(reader)
    kind, _ = await frame_reader.next()
    assert kind == ipc.HELLO
    rest = await frame_reader.available()
    assert [ipc.read_cancel(body) for _, body in rest] == [5, 6]
    writer.close()
    await asyncio.sleep(0)
    with pytest.raises(asyncio.IncompleteReadError):
        await asyncio.wait_for(frame_reader.next(), 5)
    other.close()


async def test_the_frames_of_one_turn_leave_in_one_write() -> None:
    _, writer, reader, other = await connected_pair()
    writes: list[bytes] = []
    real_write = writer.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        real_write(data)

    writer.write = counting_write  # type: ignore[method-assign]
    out = ipc.FrameWriter(writer)
    for request in range(10):
        out.write(ipc.result(request, ipc.OK))
    assert writes == []  # nothing before the loop's next turn
    await asyncio.sleep(0)
    assert len(writes) == 1
    out.write(ipc.result(10, ipc.OK))
    await asyncio.sleep(0)
    assert len(writes) == 2
    frame_reader = ipc.FrameReader(reader)
    received: list[tuple[int, bytes]] = []
    while len(received) < 11:
        received += await asyncio.wait_for(frame_reader.available(), 5)
    assert [ipc.read_result(body)[0] for _, body in received] == list(range(11))
    writer.close()
    other.close()


async def test_the_inference_process_sees_every_workers_requests_in_flight(
    tmp_path: Path,
) -> None:
    """A lone call may hold the inference process's loop only while the workers' counts in
    shared memory sum to at most one; a worker without a slot counts as busy while connected,
    and a worker that leaves takes its count with it."""
    settings = Settings(
        visual_model="simulated://visual",
        textual_model="simulated://textual",
        faces_enabled=False,
        workers=2,
    )
    server = InferenceServer(
        Engine(settings, load_models(settings), Metrics()),
        tmp_path / "inference.sock",
        f"pfai-test-{uuid.uuid4().hex[:8]}-stats",
        workers=2,
    )
    await server.engine.start()
    await server.start()

    async def connect(name: str) -> InferenceClient:
        client = InferenceClient(server.socket_path, name, f"pfai-test-{uuid.uuid4().hex[:8]}")
        client.start()
        await asyncio.wait_for(client.connected.wait(), 10)
        return client

    try:
        first, second = await connect("0"), await connect("1")
        await wait_until_async(server.alone_in_server, "no requests yet")
        first.publish_requests(1)
        assert server.alone_in_server(), "the one request asking"
        second.publish_requests(1)
        assert not server.alone_in_server(), "one request in each worker"
        second.publish_requests(0)
        assert server.alone_in_server()
        stranger = await connect("7")  # no slot among 2 workers: its requests are not seen
        await wait_until_async(lambda: not server.alone_in_server(), "an unslotted worker")
        await stranger.close()
        await wait_until_async(server.alone_in_server, "the unslotted worker gone")
        second.publish_requests(3)
        assert not server.alone_in_server()
        await second.close()  # killed with 3 requests in flight: they are gone with it
        await wait_until_async(server.alone_in_server, "the worker's count cleared")
        await first.close()
    finally:
        await server.engine.close()
        await server.close()
