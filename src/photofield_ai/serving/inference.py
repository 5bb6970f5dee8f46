"""The inference process of the multi-process server: it owns the ONNX Runtime sessions and the
dynamic batchers (one engine, one CUDA context) and serves the HTTP workers over serving.ipc, so
that batches form across every worker's requests.

Everything the in-process server does with a queue still holds, because it is the same engine:
N, T, K and the queue limit per model, search before indexing, queue timeouts, dropping the
items of a request whose client left (CANCEL), 503 when full. Workers see the queue depth in
shared memory and refuse early, as the in-process server does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from photofield_ai.batcher import (
    BatcherClosedError,
    BatchFailedError,
    DynamicBatcher,
    QueueFullError,
    QueueTimeoutError,
)
from photofield_ai.batcher.batcher import Array
from photofield_ai.config import Settings
from photofield_ai.logs import configure_logging
from photofield_ai.memory import tune_process
from photofield_ai.metrics import Metrics
from photofield_ai.runtime.threads import (
    exit_past_running_calls,
    name_native_thread,
    run_event_loop,
)
from photofield_ai.serving import ipc
from photofield_ai.serving.engine import Engine, ModelPlan
from photofield_ai.serving.loading import STARTUP_ERRORS, load_models

log = logging.getLogger("photofield_ai")

_STATUS = (
    (QueueFullError, ipc.QUEUE_FULL),
    (QueueTimeoutError, ipc.QUEUE_TIMEOUT),
    (BatcherClosedError, ipc.CLOSED),
    (BatchFailedError, ipc.FAILED),
)


def _status(exc: BaseException) -> int:
    return next((s for kind, s in _STATUS if isinstance(exc, kind)), ipc.FAILED)


def _publish(stats: ipc.QueueStats, index: int, depth: int) -> None:
    stats.depth[index] = depth


def remote_model(plan: ModelPlan) -> ipc.RemoteModel:
    """What a worker needs to know of a served model: item and output layout, from one run."""
    example = plan.example()
    output = plan.run_batch(example)
    return ipc.RemoteModel(
        plan.name,
        tuple(example.shape[1:]),
        str(example.dtype),
        tuple(output.shape[1:]),
        str(output.dtype),
        plan.policy.max_queue,
        dataclasses.asdict(plan.spec) if plan.spec is not None else None,
    )


@dataclass
class _Worker:
    """One connected HTTP worker: its slab, where its answers go, and its requests in progress
    (each one's future from the batcher, which CANCEL cancels)."""

    shm: SharedMemory
    out: ipc.FrameWriter
    requests: dict[int, asyncio.Future[list[Array]]] = field(default_factory=dict)
    gone: bool = False


class InferenceServer:
    def __init__(self, engine: Engine, socket_path: Path, stats_name: str, workers: int) -> None:
        self.engine = engine
        self.workers = workers  # slots for the workers' request counts in the shared stats
        self.socket_path = socket_path
        self.stats_name = stats_name
        self.models: list[ipc.RemoteModel] = []
        self.batchers: list[DynamicBatcher] = []
        self._server: asyncio.AbstractServer | None = None
        self._stats: ipc.QueueStats | None = None
        # Workers connected whose name is no slot of the stats: their requests are not
        # counted, so nothing is ever "alone in the server" while one is connected.
        self._unslotted = 0
        self._slot_users: collections.Counter[int] = collections.Counter()

    async def start(self) -> None:
        self.models = [remote_model(plan) for plan in self.engine.plans]
        self.batchers = [self.engine.batchers[m.name] for m in self.models]
        self._stats = stats = ipc.QueueStats.create(self.stats_name, len(self.models), self.workers)
        for i, batcher in enumerate(self.batchers):
            batcher.add_depth_listener(functools.partial(_publish, stats, i))
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._serve_worker, str(self.socket_path))

    def alone_in_server(self) -> bool:
        """No HTTP request in flight in any worker but the one asking (the engine's
        `alone_in_server`); False before the stats exist."""
        return self._unslotted == 0 and self._stats is not None and self._stats.alone_in_server()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._stats is not None:
            self._stats.close()
            with contextlib.suppress(FileNotFoundError):
                self._stats.shm.unlink()

    async def _serve_worker(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(ipc.welcome(self.models, self.stats_name, self.workers))
        frames = ipc.FrameReader(reader)
        try:
            kind, body = await frames.next()
            if kind != ipc.HELLO:
                return
            hello = json.loads(body)
            worker = _Worker(ipc.attach(hello["shm"]), ipc.FrameWriter(writer))
        except (asyncio.IncompleteReadError, ConnectionError, FileNotFoundError, ValueError):
            writer.close()
            return
        log.info("Worker %s connected", hello["worker"])
        slot = ipc.worker_slot(str(hello["worker"]), self.workers)
        if slot is None:
            self._unslotted += 1
        else:
            self._slot_users[slot] += 1
        try:
            while True:
                for kind, body in await frames.available():
                    if kind == ipc.SUBMIT:
                        self._submit(worker, *ipc.read_submit(body))
                    elif kind == ipc.CANCEL:
                        running = worker.requests.get(ipc.read_cancel(body))
                        if running is not None:
                            running.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker is gone: its queued items go with it
        finally:
            worker.gone = True
            for future in list(worker.requests.values()):
                future.cancel()
            if worker.requests:
                await asyncio.wait(worker.requests.values(), timeout=5)
            writer.close()
            worker.shm.close()
            if slot is None:
                self._unslotted -= 1
            else:
                self._slot_users[slot] -= 1
                if self._slot_users[slot] == 0 and self._stats is not None:
                    # A killed worker's count would stay until its replacement's first request
                    # (unless that replacement is already connected and writing it).
                    self._stats.publish_requests(slot, 0)
            log.info("Worker %s disconnected", hello["worker"])

    def _submit(self, worker: _Worker, request: int, index: int, offsets: list[int]) -> None:
        """Queue a request's items in place (views of the worker's slots); `_answer` replies.
        No task per request: the batcher's future and one callback are all it costs here."""
        model, batcher = self.models[index], self.batchers[index]
        items = [ipc.view(worker.shm, o, model.item_shape, model.item_dtype) for o in offsets]
        try:
            outputs = batcher.submit_many(items)
        except Exception as exc:  # refused at once: queue full, shutting down
            worker.out.write(ipc.result(request, _status(exc), str(exc)))
            return
        if outputs.done():  # answered inside submit_many (a lone batch, called on this loop)
            self._answer(worker, request, model, offsets, outputs)  # in this turn's write
            return
        worker.requests[request] = outputs
        outputs.add_done_callback(functools.partial(self._answer, worker, request, model, offsets))

    @staticmethod
    def _answer(
        worker: _Worker,
        request: int,
        model: ipc.RemoteModel,
        offsets: list[int],
        outputs: asyncio.Future[list[Array]],
    ) -> None:
        worker.requests.pop(request, None)
        if worker.gone:
            return
        try:
            rows = outputs.result()
        except asyncio.CancelledError:  # CANCEL
            worker.out.write(ipc.result(request, ipc.CANCELLED))
            return
        except Exception as exc:
            worker.out.write(ipc.result(request, _status(exc), str(exc)))
            return
        for offset, row in zip(offsets, rows, strict=True):
            out = ipc.view(worker.shm, offset, model.output_shape, model.output_dtype)
            np.copyto(out, row, casting="unsafe")
        worker.out.write(ipc.result(request, ipc.OK))


def main(settings: Settings, socket_path: str, stats_name: str, ready: Connection) -> None:
    """The inference process: load, serve the workers until SIGTERM, drain, exit. Tells the
    supervisor over `ready` when it serves, or why it could not start."""

    tune_process()
    configure_logging(settings.log_level)
    name_native_thread("inference")
    try:
        models = load_models(settings)
    except STARTUP_ERRORS as exc:
        with contextlib.suppress(OSError):
            ready.send(f"error: {exc}")
        raise SystemExit(1) from None

    async def run() -> None:
        server: InferenceServer | None = None

        def alone_in_server() -> bool:
            return server is not None and server.alone_in_server()

        engine = Engine(settings, models, Metrics(), alone_in_server)
        await engine.start()
        server = InferenceServer(engine, Path(socket_path), stats_name, settings.workers or 1)
        await server.start()
        stop = asyncio.Event()
        # Stopped by the supervisor (SIGTERM) once the workers have drained; Ctrl-C at a
        # terminal reaches the whole process group and is the supervisor's to interpret.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(OSError):  # a restart: nobody waits on the pipe
            ready.send("ready")
        log.info("Inference process %d serving %s", os.getpid(), ", ".join(engine.batchers))
        await stop.wait()
        await engine.close()
        await server.close()

    run_event_loop(run())
    exit_past_running_calls()
