"""How HTTP workers and the inference process talk: tensors in shared memory, small frames on a
Unix socket.

Each worker owns one shared-memory slab, carved into fixed-size slots per model (an item's input,
and later its output, which overwrites the input once the batch has copied it). A request sends
one SUBMIT frame naming its slots; the inference process reads the items in place, batches them
with every other worker's, writes each output row into its item's slot and answers with one
RESULT frame. Nothing is pickled; a frame is a few dozen bytes. The inference process also
publishes each model's queue depth in a small shared array, so a worker refuses a request before
decoding it when the queue is full — as the in-process server does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import struct
from dataclasses import asdict, dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt

# Frame: u32 length of what follows, u8 type, body.
HELLO, WELCOME, SUBMIT, RESULT, CANCEL = 1, 2, 3, 4, 5
_LENGTH = struct.Struct("<I")
_SUBMIT = struct.Struct("<IHH")  # request id, model index, item count; then u64 offsets
_RESULT = struct.Struct("<IB")  # request id, status; then an error message (UTF-8)
_CANCEL = struct.Struct("<I")
_OFFSET = struct.Struct("<Q")
READ_BYTES = 1 << 16

# RESULT status: what the in-process batcher would have raised.
OK, QUEUE_FULL, QUEUE_TIMEOUT, CLOSED, FAILED, CANCELLED = range(6)


@dataclass(frozen=True)
class RemoteModel:
    """One model the inference process serves, as a worker needs to know it."""

    name: str
    item_shape: tuple[int, ...]
    item_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str
    max_queue: int
    spec: dict[str, Any] | None  # families.ModelSpec fields for embedding models, else None

    @property
    def slot_bytes(self) -> int:
        item = int(np.prod(self.item_shape)) * np.dtype(self.item_dtype).itemsize
        out = int(np.prod(self.output_shape)) * np.dtype(self.output_dtype).itemsize
        return max(item, out)


def pack(kind: int, body: bytes) -> bytes:
    return _LENGTH.pack(len(body) + 1) + bytes([kind]) + body


class FrameReader:
    """The frames of one connection, as many at a time as one read brings. Under load a worker's
    SUBMITs and the inference process's RESULTs arrive by the dozen; parsing them from one
    buffer costs one await per read instead of two per frame."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buffer = bytearray()
        self._frames: collections.deque[tuple[int, bytes]] = collections.deque()

    async def next(self) -> tuple[int, bytes]:
        """The next frame (kind, body)."""
        while not self._frames:
            await self._fill()
        return self._frames.popleft()

    async def available(self) -> list[tuple[int, bytes]]:
        """Every frame received and not yet taken; waits for at least one."""
        while not self._frames:
            await self._fill()
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def _fill(self) -> None:
        chunk = await self._reader.read(READ_BYTES)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(self._buffer), None)
        buffer = self._buffer
        buffer += chunk
        start, size = 0, len(buffer)
        while size - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if end > size:
                break
            kind = start + _LENGTH.size
            self._frames.append((buffer[kind], bytes(buffer[kind + 1 : end])))
            start = end
        if start:
            del buffer[:start]


class FrameWriter:
    """Frames to one connection, written once per turn of the event loop: the RESULTs of one
    batch (or the SUBMITs of the requests one turn handled) leave in one write, not one system
    call each."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._pending: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(frame)

    def _flush(self) -> None:
        frames, self._pending = self._pending, []  # never empty: write() scheduled this
        if not self.writer.is_closing():
            self.writer.write(b"".join(frames))


def hello(worker: str, shm_name: str) -> bytes:
    return pack(HELLO, json.dumps({"worker": worker, "shm": shm_name}).encode())


def welcome(models: list[RemoteModel], stats_name: str, workers: int) -> bytes:
    payload = {"models": [asdict(m) for m in models], "stats": stats_name, "workers": workers}
    return pack(WELCOME, json.dumps(payload).encode())


def read_welcome(body: bytes) -> tuple[list[RemoteModel], str, int]:
    """The models, the name of the shared QueueStats and how many worker slots they hold."""
    payload = json.loads(body)
    models = [
        RemoteModel(
            m["name"],
            tuple(m["item_shape"]),
            m["item_dtype"],
            tuple(m["output_shape"]),
            m["output_dtype"],
            m["max_queue"],
            m["spec"],
        )
        for m in payload["models"]
    ]
    return models, payload["stats"], int(payload["workers"])


def submit(request: int, model: int, offsets: list[int]) -> bytes:
    body = _SUBMIT.pack(request, model, len(offsets)) + b"".join(_OFFSET.pack(o) for o in offsets)
    return pack(SUBMIT, body)


def read_submit(body: bytes) -> tuple[int, int, list[int]]:
    request, model, n = _SUBMIT.unpack_from(body)
    offsets = [_OFFSET.unpack_from(body, _SUBMIT.size + i * _OFFSET.size)[0] for i in range(n)]
    return request, model, offsets


def result(request: int, status: int, message: str = "") -> bytes:
    return pack(RESULT, _RESULT.pack(request, status) + message.encode())


def read_result(body: bytes) -> tuple[int, int, str]:
    request, status = _RESULT.unpack_from(body)
    return request, status, body[_RESULT.size :].decode(errors="replace")


def cancel(request: int) -> bytes:
    return pack(CANCEL, _CANCEL.pack(request))


def read_cancel(body: bytes) -> int:
    return int(_CANCEL.unpack(body)[0])


# -- shared memory ---------------------------------------------------------------------------
# Segments this process created (and owns: the resource tracker unlinks them if it dies).
_CREATED: set[str] = set()
# Whether this process shares Python's resource tracker with the processes whose segments it
# attaches (true in the supervisor's children: multiprocessing hands each the parent's tracker).
_TRACKER_SHARED = False


def share_resource_tracker() -> None:
    """Say that this process's resource tracker is its peers' too: attaching to a segment then
    leaves the tracker's record alone. The tracker keeps one record per name for all the processes
    sharing it; removing it on attach dropped the creator's record (its segment then went untracked
    if it died) and made the creator's unlink print a KeyError traceback at every shutdown."""
    global _TRACKER_SHARED
    _TRACKER_SHARED = True


def create(name: str, size: int) -> shared_memory.SharedMemory:
    """A new segment owned by this process."""
    shm = shared_memory.SharedMemory(name=name, create=True, size=size)
    _CREATED.add(name)
    return shm


def attach(name: str) -> shared_memory.SharedMemory:
    """Attach to another process's segment without making this process its owner: with a
    resource tracker of its own, this process's would otherwise unlink it when this process
    exits. A segment this process created itself stays its own (both ends in one process:
    tests), and so does one whose creator shares this process's tracker (the record is theirs
    together: share_resource_tracker)."""
    shm = shared_memory.SharedMemory(name=name)
    if name not in _CREATED and not _TRACKER_SHARED:
        # Best effort: the tracker is an implementation detail of multiprocessing.
        with contextlib.suppress(Exception):
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def view(
    shm: shared_memory.SharedMemory, offset: int, shape: tuple[int, ...], dtype: str
) -> npt.NDArray[Any]:
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset)


class SlotPool:
    """Fixed-size slots of one model in a worker's slab; a request waits for free slots (a
    worker-local bound on what it has in flight)."""

    def __init__(self, base: int, slot_bytes: int, count: int) -> None:
        self.base = base
        self.slot_bytes = slot_bytes
        self.count = count
        self._free: collections.deque[int] = collections.deque(
            base + i * slot_bytes for i in range(count)
        )
        self._freed = asyncio.Event()

    @property
    def end(self) -> int:
        return self.base + self.slot_bytes * self.count

    @property
    def available(self) -> int:
        return len(self._free)

    async def take(self, n: int) -> list[int]:
        if n > self.count:
            raise ValueError(f"{n} items, more than the {self.count} slots of this model")
        while len(self._free) < n:
            self._freed.clear()
            await self._freed.wait()
        return [self._free.popleft() for _ in range(n)]

    def give_back(self, offsets: list[int]) -> None:
        self._free.extend(offsets)
        self._freed.set()


def worker_slot(worker: str, workers: int) -> int | None:
    """The QueueStats slot of a worker named `worker` (the supervisor names them 0..W-1);
    None for any other name: its requests cannot be counted."""
    return int(worker) if worker.isdigit() and int(worker) < workers else None


class QueueStats:
    """Per model: queue depth, written by the inference process, read by workers. Per worker:
    its HTTP requests in flight, written by that worker (one writer per slot, so no lock),
    read by the inference process (serving.activity)."""

    def __init__(self, shm: shared_memory.SharedMemory, models: int, workers: int) -> None:
        self.shm = shm
        self.depth: npt.NDArray[np.int64] = np.ndarray((models,), np.int64, buffer=shm.buf)
        self.requests: npt.NDArray[np.int64] = np.ndarray(
            (workers,), np.int64, buffer=shm.buf, offset=8 * models
        )

    @classmethod
    def create(cls, name: str, models: int, workers: int) -> QueueStats:
        size = max(8, 8 * (models + workers))
        shm = create(name, size)
        stats = cls(shm, models, workers)
        stats.depth[:] = 0
        stats.requests[:] = 0
        return stats

    @classmethod
    def open(cls, name: str, models: int, workers: int) -> QueueStats:
        return cls(attach(name), models, workers)

    def publish_requests(self, slot: int, count: int) -> None:
        self.requests[slot] = count

    def alone_in_server(self) -> bool:
        """At most one HTTP request in flight over every worker."""
        return int(self.requests.sum()) <= 1

    def close(self) -> None:
        del self.depth
        del self.requests
        self.shm.close()
