"""Background priority for indexing: image and face inference run in threads with a raised Unix
nice value, so that a search (text) and the request handling around it win the cores whenever they
need them, while indexing keeps every core they leave idle.

On Linux a nice value belongs to a thread and is inherited by the threads it creates. ONNX Runtime
creates a session's intra-op thread pool while the session is built, so an indexing model's
session is built in a lowered thread (its pool inherits the value), and its calls are made from
lowered threads (the calling thread works in the pool too). Raising one's own nice value needs no
privileges; elsewhere than Linux all of this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_NICE = 19


def lower_current_thread(increment: int) -> bool:
    """Raise the calling thread's nice value by `increment` (capped at 19). True if it did."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + increment))
    except (OSError, AttributeError) as exc:
        log.debug("could not lower thread priority: %s", exc)
        return False
    return True


_PR_SET_NAME = 15


def _load_prctl() -> Callable[..., int] | None:
    """prctl(2) from the C library, on Linux; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int  # type: ignore[attr-defined]
    return prctl


_PRCTL = _load_prctl()
_UNUSED = (ctypes.c_ulong(0),) * 3  # prctl takes four unsigned longs after the option


def prctl(option: int, arg: int | bytes = 0) -> int | None:
    """prctl(2) with its one argument (an integer, or a string), the unused ones zero and every
    one of them passed as the unsigned long the kernel reads; None where there is no prctl."""
    if _PRCTL is None:
        return None
    value = ctypes.c_char_p(arg) if isinstance(arg, bytes) else ctypes.c_ulong(arg)
    return _PRCTL(option, value, *_UNUSED)


def name_native_thread(name: str) -> None:
    """Give the calling thread its name in the OS too (Linux: 15 characters), so `top -H`,
    `ps -L` and per-thread CPU accounting show what each thread is for."""
    prctl(_PR_SET_NAME, name.encode()[:15])


def _start_worker(increment: int, name: str) -> None:
    name_native_thread(name)
    lower_current_thread(increment)


def call_in_lowered_thread(increment: int, fn: Callable[[], T]) -> T:
    """`fn()` in a new thread lowered first, so that threads `fn` creates are lowered too."""
    if increment <= 0:
        return fn()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        lower_current_thread(increment)
        try:
            outcome.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="lowered-loader")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def lowered_executor(increment: int, max_workers: int, name: str) -> ThreadPoolExecutor:
    """Worker threads that lower themselves as they start: where indexing calls are made."""
    return ThreadPoolExecutor(
        max_workers=max_workers,
        thread_name_prefix=name,
        initializer=_start_worker,
        initargs=(increment, name),
    )


def thread_nice_values() -> dict[int, int]:
    """Nice value of every thread of this process (Linux), for tests and diagnostics."""
    values = {}
    for task in os.listdir("/proc/self/task"):
        try:
            values[int(task)] = os.getpriority(os.PRIO_PROCESS, int(task))
        except OSError:
            continue  # the thread ended meanwhile
    return values


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a new event loop: uvloop's where installed (cheaper per wake-up and per
    socket operation than asyncio's selector loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def exit_past_running_calls(code: int = 0, settle_s: float = 0.5) -> None:
    """Exit now if a model call is still running once the drain is over.

    A call in ONNX Runtime cannot be interrupted, and Python joins every worker thread at exit:
    without this, a call that outlived the grace period (or a second SIGTERM) would hold the
    process until it returned, and the orchestrator's kill would come first. Idle worker
    threads get `settle_s` to notice their executor has shut down."""
    deadline = time.monotonic() + settle_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    running = [
        t.name
        for t in threading.enumerate()
        if t is not threading.current_thread() and not t.daemon and t.is_alive()
    ]
    if not running:
        return
    log.warning(
        "Exiting with %d worker thread(s) still running after the drain (%s)",
        len(running),
        ", ".join(running),
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
