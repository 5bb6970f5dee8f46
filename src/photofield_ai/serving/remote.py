"""An HTTP worker's side of the multi-process server: the same Engine interface the handlers
use in-process, with each model's queue a RemoteBatcher in front of the inference process.

A worker decodes and tokenizes itself (the family's pre-step runs where the request arrived),
copies each item into a slot of its shared-memory slab, and awaits the RESULT. If the inference
process goes away, requests in progress and new ones fail at once with 503 ("restarting") and
the worker reconnects until the supervisor has started a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from photofield_ai.batcher import (
    BatcherClosedError,
    BatchFailedError,
    QueueFullError,
    QueueTimeoutError,
)
from photofield_ai.batcher.batcher import Array
from photofield_ai.config import Settings
from photofield_ai.families import FAMILIES, ImageEncoder, ModelSpec, TextEncoder
from photofield_ai.metrics import Metrics
from photofield_ai.serving import ipc
from photofield_ai.serving.engine import Engine, ServedEmbeddingModel
from photofield_ai.serving.faces import FacePipeline

log = logging.getLogger("photofield_ai")

RECONNECT_S = 0.2
# Slots per model per worker: as many as fit in SLAB_BYTES_PER_MODEL, within these bounds.
SLAB_BYTES_PER_MODEL = 64 << 20
MIN_SLOTS, MAX_SLOTS = 8, 256

_ERRORS: dict[int, Callable[[str], Exception]] = {
    ipc.QUEUE_FULL: QueueFullError,
    ipc.QUEUE_TIMEOUT: QueueTimeoutError,
    ipc.CLOSED: BatcherClosedError,
    ipc.FAILED: BatchFailedError,
}


class InferenceUnavailableError(BatcherClosedError):
    """The inference process is not there (starting, restarting): 503, retry shortly."""


class InferenceClient:
    """The worker's connection to the inference process; reconnects for as long as it runs."""

    def __init__(self, socket_path: Path, worker: str, slab_name: str) -> None:
        self.socket_path = socket_path
        self.worker = worker
        self.slab_name = slab_name
        self.models: list[ipc.RemoteModel] = []
        self.connected = asyncio.Event()
        self.welcomed = asyncio.Event()  # the model list arrived at least once
        self.slab: SharedMemory | None = None
        self.pools: list[ipc.SlotPool] = []
        self.stats: ipc.QueueStats | None = None
        self._out: ipc.FrameWriter | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, str]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._requests = 0  # this worker's HTTP requests in flight, last published
        self._slot: int | None = None  # where they are published (from the WELCOME)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="inference-client")

    def publish_requests(self, count: int) -> None:
        """This worker's HTTP requests in flight, for the inference process to see whether a
        lone request is alone in the whole server (serving.activity)."""
        self._requests = count
        if self.stats is not None and self._slot is not None:
            self.stats.publish_requests(self._slot, count)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.stats is not None:
            self.stats.close()
        if self.slab is not None:
            self.slab.close()
            with contextlib.suppress(FileNotFoundError):
                self.slab.unlink()

    async def _run(self) -> None:
        while not self._closing:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except (ConnectionError, FileNotFoundError, OSError):
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                await self._session(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                self.connected.clear()
                self._out = None
                writer.close()
                self._fail_pending()
                if not self._closing:
                    log.warning("Lost the inference process; reconnecting")
            await asyncio.sleep(RECONNECT_S)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = ipc.FrameReader(reader)
        kind, body = await frames.next()
        if kind != ipc.WELCOME:
            raise ConnectionError("unexpected first frame")
        models, stats_name, workers = ipc.read_welcome(body)
        if self.slab is None:
            self._make_slab(models)
        if self.stats is not None:
            self.stats.close()
        self.stats = ipc.QueueStats.open(stats_name, len(models), workers)
        self._slot = ipc.worker_slot(self.worker, workers)
        self.publish_requests(self._requests)  # a restarted inference process starts at 0
        self.models = models
        assert self.slab is not None
        writer.write(ipc.hello(self.worker, self.slab.name))
        self._out = ipc.FrameWriter(writer)
        self.connected.set()
        self.welcomed.set()
        while True:
            for kind, body in await frames.available():
                if kind == ipc.RESULT:
                    request, status, message = ipc.read_result(body)
                    future = self._pending.pop(request, None)
                    if future is not None and not future.done():
                        future.set_result((status, message))

    def _make_slab(self, models: list[ipc.RemoteModel]) -> None:
        counts = [
            max(MIN_SLOTS, min(MAX_SLOTS, m.max_queue, SLAB_BYTES_PER_MODEL // m.slot_bytes))
            for m in models
        ]
        size = sum(c * m.slot_bytes for c, m in zip(counts, models, strict=True))
        self.slab = ipc.create(self.slab_name, max(size, 1))
        base = 0
        for count, model in zip(counts, models, strict=True):
            pool = ipc.SlotPool(base, model.slot_bytes, count)
            self.pools.append(pool)
            base = pool.end

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    InferenceUnavailableError("the inference process is restarting; retry")
                )

    def send(self, frame: bytes) -> None:
        if self._out is None or not self.connected.is_set():
            raise InferenceUnavailableError("the inference process is not running; retry")
        self._out.write(frame)

    def request(
        self, model: int, offsets: list[int]
    ) -> tuple[int, asyncio.Future[tuple[int, str]]]:
        request = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self.send(ipc.submit(request, model, offsets))
        self._pending[request] = future
        return request, future

    def cancel(self, request: int, future: asyncio.Future[tuple[int, str]]) -> None:
        """Ask the inference process to drop the request; `future` resolves when it has."""
        self._pending[request] = future
        with contextlib.suppress(InferenceUnavailableError):
            self.send(ipc.cancel(request))


class RemoteBatcher:
    """A model's queue, as seen from a worker (batcher.ModelQueue)."""

    def __init__(self, client: InferenceClient, index: int) -> None:
        self.client = client
        self.index = index
        self.model = client.models[index]
        self.name = self.model.name
        self._submitted = 0  # this worker's items at the inference process now

    @property
    def idle(self) -> bool:
        """Nothing of this worker's at the inference process and nothing queued there."""
        stats = self.client.stats
        return self._submitted == 0 and (stats is None or int(stats.depth[self.index]) == 0)

    @property
    def pool(self) -> ipc.SlotPool:
        return self.client.pools[self.index]

    def check_room(self, n: int) -> None:
        if not self.client.connected.is_set():
            raise InferenceUnavailableError("the inference process is not running; retry")
        stats = self.client.stats
        depth = int(stats.depth[self.index]) if stats is not None else 0
        if depth + n > self.model.max_queue:
            raise QueueFullError(
                f"the {self.name} queue is full ({depth} of {self.model.max_queue} items waiting)"
            )

    def preparing(self, n: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the inference process batches what arrives

    async def submit(self, item: Array) -> Array:
        (result,) = await self.submit_many([item])
        return result

    async def submit_many(self, items: Sequence[Array]) -> list[Array]:
        self.check_room(len(items))
        self._submitted += len(items)
        try:
            return await self._submit_many(items)
        finally:
            self._submitted -= len(items)

    async def _submit_many(self, items: Sequence[Array]) -> list[Array]:
        model, pool, slab = self.model, self.pool, self.client.slab
        assert slab is not None
        offsets = await pool.take(len(items))
        try:
            for offset, item in zip(offsets, items, strict=True):
                np.copyto(ipc.view(slab, offset, model.item_shape, model.item_dtype), item)
            request, future = self.client.request(self.index, offsets)
        except BaseException:
            pool.give_back(offsets)
            raise
        try:
            status, message = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The client left: the inference process drops the items, then the slots are free.
            if not future.done():
                follow_up: asyncio.Future[tuple[int, str]] = (
                    asyncio.get_running_loop().create_future()
                )
                follow_up.add_done_callback(lambda _: pool.give_back(offsets))
                self.client.cancel(request, follow_up)
            else:
                pool.give_back(offsets)
            raise
        except BaseException:
            pool.give_back(offsets)
            raise
        try:
            if status != ipc.OK:
                raise _ERRORS.get(status, BatchFailedError)(message)
            return [
                ipc.view(slab, o, model.output_shape, model.output_dtype).copy() for o in offsets
            ]
        finally:
            pool.give_back(offsets)


class RemoteEngine(Engine):
    """The Engine of an HTTP worker: decode threads, limits and the tokenizer here; the models
    in the inference process."""

    def __init__(
        self, settings: Settings, metrics: Metrics, socket_path: Path, worker: str, slab: str
    ) -> None:
        super().__init__(settings, None, metrics)
        self.client = InferenceClient(socket_path, worker, slab)
        self.requests.on_change = self.client.publish_requests

    @property
    def ready(self) -> bool:
        """Connected to the inference process, and not draining."""
        return self.started and self.client.connected.is_set() and not self.draining

    async def start(self) -> None:
        self.client.start()
        await self.client.welcomed.wait()
        self._expose_remote()
        self.started = True

    def _expose_remote(self) -> None:
        queues = {m.name: RemoteBatcher(self.client, i) for i, m in enumerate(self.client.models)}
        for name, queue in queues.items():
            spec_fields = queue.model.spec
            if spec_fields is None:
                continue
            spec = ModelSpec(**{**spec_fields, "providers": tuple(spec_fields["providers"])})
            encoder = FAMILIES[spec.family].encoder(spec)
            if name == "visual" and isinstance(encoder, ImageEncoder):
                self.visual = ServedEmbeddingModel(queue, encoder)
            elif name == "textual" and isinstance(encoder, TextEncoder):
                self.textual = ServedEmbeddingModel(queue, encoder, self.text_cache)
        if "face_detector" in queues and "face_recognizer" in queues:
            self.faces = FacePipeline(
                queues["face_detector"],
                queues["face_recognizer"],
                self.decode_threads,
                self.settings.face_score_threshold,
                self.settings.face_max_faces,
            )

    async def close(self) -> None:
        self.draining = True
        await self.client.close()
        self.decode_threads.shutdown(wait=False)
