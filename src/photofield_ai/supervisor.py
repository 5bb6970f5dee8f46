"""The multi-process server's supervisor: one inference process (the sessions and batchers) and
W HTTP worker processes (each its own event loop, decode threads and listening socket on the
same port), started, watched and stopped together.

- A worker that dies is replaced; only its own requests in progress are lost.
- If the inference process dies, the workers answer 503 at once and reconnect; it is restarted.
- SIGTERM: every worker drains (readiness false, new connections for SHUTDOWN_DELAY_S, running
  requests finish); then the inference process drains its queues and stops; exit 0. Ctrl-C
  skips the delay. A second signal stops everything now.
- Metrics: every process writes to a shared directory (prometheus_client's multiprocess
  mode) and any worker's /metrics sums them; a dead process's gauges are dropped.

Processes are spawned (not forked), so none inherits another's threads or CUDA state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

from photofield_ai.config import Settings
from photofield_ai.metrics import MULTIPROCESS_DIR

log = logging.getLogger("photofield_ai")

POLL_S = 0.1
RESTART_DELAY_S = 1.0
STARTUP_TIMEOUT_S = 3600.0  # first start downloads the models


@dataclass
class _Child:
    name: str
    process: BaseProcess
    started: float
    shm: str | None = None  # the worker's slab, unlinked if the worker dies without doing it


def _child_main(target: Callable[..., None], *args: Any) -> None:
    """A child's entry point: it shares the supervisor's resource tracker (spawned by
    multiprocessing) with every other child, which the shared-memory attach must know."""
    from photofield_ai.serving import ipc

    ipc.share_resource_tracker()
    target(*args)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        workers: int,
        worker_target: Callable[..., None],
        inference_target: Callable[..., None],
    ) -> None:
        self.settings = dataclasses.replace(settings, workers=workers)
        self.workers = workers
        self.worker_target = worker_target
        self.inference_target = inference_target
        self.context = multiprocessing.get_context("spawn")
        self.rundir = Path(tempfile.mkdtemp(prefix="photofield-ai-"))
        self.socket_path = self.rundir / "inference.sock"
        self.stats_name = f"pfai-{os.getpid()}-stats"
        self._generation = 0
        self._signals: list[int] = []
        self.inference: _Child | None = None
        self.children: dict[int, _Child] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; the exit status. A start-up failure of the inference process
        is reported as its one-line error."""
        metrics_dir = self.rundir / "metrics"
        metrics_dir.mkdir()
        os.environ[MULTIPROCESS_DIR] = str(metrics_dir)  # inherited by every child
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            error = self._start_inference(wait=True)
            if error is not None:
                print(f"photofield-ai: error: {error}", flush=True, file=sys.stderr)
                return 1
            for worker in range(self.workers):
                self.children[worker] = self._start_worker(worker)
            log.info(
                "Listening on %s:%d with %d worker processes and one inference process",
                self.settings.host,
                self.settings.port,
                self.workers,
            )
            self._watch()
            return 0
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._cleanup()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def _watch(self) -> None:
        while not self._signals:
            for worker, child in list(self.children.items()):
                if not child.process.is_alive():
                    log.warning(
                        "%s exited with %s; starting a new one", child.name, child.process.exitcode
                    )
                    self._dead(child)
                    time.sleep(max(0.0, RESTART_DELAY_S - (time.monotonic() - child.started)))
                    self.children[worker] = self._start_worker(worker)
            if self.inference is not None and not self.inference.process.is_alive():
                log.error(
                    "The inference process exited with %s; restarting it (workers answer 503 "
                    "meanwhile)",
                    self.inference.process.exitcode,
                )
                self._dead(self.inference)
                self._unlink(self.stats_name)
                time.sleep(max(0.0, RESTART_DELAY_S - (time.monotonic() - self.inference.started)))
                self._start_inference(wait=False)
            time.sleep(POLL_S)
        self._drain()

    def _drain(self) -> None:
        first = self._signals[0]
        # Workers drain on SIGTERM (after the delay) or SIGUSR2 (Ctrl-C: no delay).
        forward = signal.SIGTERM if first == signal.SIGTERM else signal.SIGUSR2
        log.info("Received %s: draining the workers", signal.Signals(first).name)
        for child in self.children.values():
            self._kill(child, forward)
        deadline = (
            time.monotonic()
            + (self.settings.shutdown_delay_s if first == signal.SIGTERM else 0)
            + self.settings.shutdown_grace_s
            + 10
        )
        forced = False
        while any(c.process.is_alive() for c in self.children.values()):
            if len(self._signals) > 1 and not forced:  # a second signal: now
                forced = True
                for child in self.children.values():
                    self._kill(child, signal.SIGTERM)
            if time.monotonic() > deadline:
                for child in self.children.values():
                    self._kill(child, signal.SIGKILL)
            time.sleep(POLL_S)
        if self.inference is not None:
            self._kill(self.inference, signal.SIGTERM)
            self.inference.process.join(self.settings.shutdown_grace_s + 10)
            if self.inference.process.is_alive():
                self._kill(self.inference, signal.SIGKILL)
        log.info("Stopped")

    # -- children ----------------------------------------------------------------------------
    def _start_inference(self, wait: bool) -> str | None:
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_child_main,
            args=(
                self.inference_target,
                self.settings,
                str(self.socket_path),
                self.stats_name,
                sender,
            ),
            name="photofield-ai-inference",
        )
        process.start()
        sender.close()
        self.inference = _Child("the inference process", process, time.monotonic())
        if not wait:
            receiver.close()
            return None
        try:
            return self._await_ready(receiver, process)
        finally:
            receiver.close()

    def _await_ready(self, receiver: Connection, process: BaseProcess) -> str | None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and not self._signals:
            if receiver.poll(POLL_S):
                try:
                    message = str(receiver.recv())
                except EOFError:
                    break
                return None if message == "ready" else message.removeprefix("error: ")
            if not process.is_alive():
                break
        return f"the inference process did not start (exit status {process.exitcode})"

    def _start_worker(self, worker: int) -> _Child:
        self._generation += 1
        shm = f"pfai-{os.getpid()}-w{worker}-{self._generation}"
        process = self.context.Process(
            target=_child_main,
            args=(self.worker_target, self.settings, worker, str(self.socket_path), shm),
            name=f"photofield-ai-worker-{worker}",
        )
        process.start()
        return _Child(f"worker {worker}", process, time.monotonic(), shm)

    def _dead(self, child: _Child) -> None:
        from prometheus_client import multiprocess

        if child.process.pid is not None:
            multiprocess.mark_process_dead(child.process.pid)  # type: ignore[no-untyped-call]
        if child.shm is not None:
            self._unlink(child.shm)

    @staticmethod
    def _kill(child: _Child, signum: int) -> None:
        if child.process.pid is not None and child.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signum)

    @staticmethod
    def _unlink(name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            segment = SharedMemory(name=name)
            segment.close()
            segment.unlink()

    def _cleanup(self) -> None:
        for child in [*self.children.values(), *([self.inference] if self.inference else [])]:
            self._kill(child, signal.SIGKILL)
            if child.shm is not None:
                self._unlink(child.shm)
        self._unlink(self.stats_name)
        shutil.rmtree(self.rundir, ignore_errors=True)
        os.environ.pop(MULTIPROCESS_DIR, None)
