"""One queue and one batch loop per model.

Requests put items on the queue and await their results; the loop takes up to N items and runs
ONE session call on the stacked batch in a worker thread. An idle model starts a batch the moment
an item arrives (a lone request never waits for T); while K batches are in flight, items pile up
and the next batch takes them all at once, so batches grow with load on their own. T only applies
when the model is already busy: the oldest item waits at most T ms for the batch to fill.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from photofield_ai.batcher.gate import PriorityGate
from photofield_ai.metrics import BatcherMetrics

log = logging.getLogger(__name__)

Array = npt.NDArray[np.generic]
RunBatch = Callable[[Array], Array]

# The most a thread's reused input batch may hold (BatchBuffers): 64 thumbnails as uint8
# pixels take 9.6 MB, 8 float32 CLIP inputs 4.8 MB.
BATCH_BUFFER_MAX_BYTES = 16 * 1024 * 1024
# Lone calls whose durations decide whether the next one may run on the event loop.
LONE_CALLS_KEPT = 8


class QueueFullError(Exception):
    """The model's queue holds `max_queue` items already: the client should retry later."""


class QueueTimeoutError(Exception):
    """The item waited longer than the queue timeout and was not run."""


class BatchFailedError(Exception):
    """The session call for the item's batch raised; other batches are unaffected."""


class BatcherClosedError(Exception):
    """The server is shutting down and takes no new items."""


class ModelQueue(Protocol):
    """What a request handler uses of a model's queue: the in-process DynamicBatcher, or a
    worker's RemoteBatcher in front of the inference process (serving.remote)."""

    name: str

    @property
    def idle(self) -> bool: ...

    def check_room(self, n: int) -> None: ...

    def preparing(self, n: int) -> contextlib.AbstractContextManager[None]: ...

    async def submit(self, item: Array) -> Array: ...

    def submit_many(self, items: Sequence[Array]) -> Awaitable[list[Array]]: ...


@dataclass(frozen=True)
class BatchPolicy:
    """How one model's queue is served (Triton's words). No defaults here: they depend on the
    device and the model, and live in one place, `serving.layout`."""

    max_batch_size: int  # N
    batch_timeout_s: float  # T
    max_concurrent_batches: int  # K
    max_queue: int
    queue_timeout_s: float | None
    # Spread the waiting items over the free batch slots instead of one batch taking them all:
    # for single-threaded CPU batches, two batches of 2 use both cores where one of 4 uses one.
    split_across_slots: bool = False
    # How long a batch waits for items known to be on their way (requests being decoded, the
    # clients of the batch just answered; see DynamicBatcher._expected); 0: never.
    wait_for_expected_s: float = 0.0
    # A lone batch (nothing else queued, running or on its way, and no other request in the
    # server: DynamicBatcher's `inline_allowed`) makes its session call on the event loop
    # itself, without the hops to an inference thread and back, while the model's recent lone
    # calls all took at most this long (see DynamicBatcher._may_call_inline); 0: never.
    inline_call_max_s: float = 0.0
    # Such a lone batch is called inside submit_many itself, its request answered before
    # submit_many returns (DynamicBatcher._may_answer_now): for a batcher whose event loop does
    # no HTTP (the multi-process server's inference process). Where the loop also reads
    # requests, waiting for the batch loop's turn lets it read the next ones first — and see
    # that the request is no longer alone.
    inline_in_submit: bool = False
    # A lone batch takes `run_alone` (the every-core session) only while no other request is in
    # the server (DynamicBatcher's `alone_allowed`), not whenever it is lone to this batcher:
    # for a session whose threads spin during its calls, which would take the cores from
    # other requests' decodes and models.
    alone_only_in_idle_server: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_concurrent_batches < 1 or self.max_queue < 1:
            raise ValueError("batch size, concurrent batches and queue size must be at least 1")


def stack(items: Sequence[Array]) -> Array:
    """The items as one batch. A batch of one is its item with a batch axis added, a view:
    a lone request's 224² image is not copied once more on its way to the model."""
    if len(items) == 1:
        return np.ascontiguousarray(items[0])[np.newaxis]
    return np.stack(items)


class BatchBuffers:
    """One reused input batch per thread, instead of a new array per batch.

    A new batch over malloc's mmap threshold (fixed at 256 KB by memory.tune_process) is a
    fresh mapping, page-faulted in and zeroed by the kernel every time: 2.5 ms of CPU for 13
    thumbnails on the simulated accelerator, most of what the inference threads spent per
    batch. A buffer that stays mapped costs only the copy. It holds up to max_batch_size rows
    of the first item's shape, and at most BATCH_BUFFER_MAX_BYTES (larger batches, such as
    several 640² face-detection inputs, are stacked anew: they cost a model call of tens of
    ms, where the page faults do not show). Pages never written are never resident, so a
    model that only sees small batches does not pay for N rows. A batch of one stays a view
    (`stack`)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._local = threading.local()

    def stack(self, items: Sequence[Array]) -> Array:
        first = items[0]
        if len(items) == 1 or len(items) * first.nbytes > BATCH_BUFFER_MAX_BYTES:
            return stack(items)
        buffer: Array | None = getattr(self._local, "buffer", None)
        if (
            buffer is None
            or len(buffer) < len(items)
            or buffer.shape[1:] != first.shape
            or buffer.dtype != first.dtype
        ):
            rows = max(len(items), min(self.rows, BATCH_BUFFER_MAX_BYTES // first.nbytes))
            buffer = np.empty((rows, *first.shape), first.dtype)
            self._local.buffer = buffer
        return np.stack(items, out=buffer[: len(items)])


def detached(outputs: Array, batch: Array) -> Array:
    """`outputs`, copied if they are a view of `batch`: the next batch of this thread will
    overwrite its buffer while these rows wait to be answered. Session outputs are fresh
    arrays; this keeps a run function that returns a slice of its input correct."""
    if np.may_share_memory(outputs, batch):
        return outputs.copy()
    return outputs


@dataclass
class _Answered:
    """Clients of one batch answered at `at`, `not_back` of them still to send their next item."""

    at: float
    not_back: int


class _Request:
    """The items of one request and the one future that answers them all. No future per item
    and no gather: on the multi-process server's inference loop each of those was several
    callbacks per item, and the loop is what bounds its throughput."""

    __slots__ = ("future", "pending", "rows")

    def __init__(self, future: asyncio.Future[list[Array]], count: int) -> None:
        self.future = future
        self.rows: list[Any] = [None] * count
        self.pending = count

    def answer(self, index: int, row: Array) -> None:
        if self.future.done():
            return
        self.rows[index] = row
        self.pending -= 1
        if not self.pending:
            self.future.set_result(self.rows)

    def fail(self, error: BaseException) -> None:
        """The request fails with its first failing item (as gather did); its items still
        queued are then dropped (DynamicBatcher._on_done), not run for nobody."""
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(eq=False, slots=True)
class _Entry:
    item: Array
    request: _Request
    index: int
    enqueued: float


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        policy: BatchPolicy,
        metrics: BatcherMetrics | None = None,
        *,
        holds: PriorityGate | None = None,
        yields_to: PriorityGate | None = None,
        executor: Executor | None = None,
        run_alone: RunBatch | None = None,
        inline_allowed: Callable[[], bool] | None = None,
        alone_allowed: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._run_batch = run_batch
        # The same model laid out for a batch that has the device to itself (every core): used
        # when a batch starts with nothing else running or waiting, so a lone request is as
        # fast as the best single call while a busy queue gets the throughput layout.
        self._run_alone = run_alone
        # Asked before a lone batch takes `run_alone` when the policy says
        # `alone_only_in_idle_server`: True while no other request is in the server.
        self._alone_allowed = alone_allowed
        # Asked before a call on the event loop (with inline_call_max_s): True only while no
        # other request is in the server and a call now costs what the recent ones did (no
        # session to open again after an idle unload). None: never on the loop.
        self._inline_allowed = inline_allowed
        # How long the latest lone calls took, measured around the call itself (no hops).
        self._lone_calls: collections.deque[float] = collections.deque(maxlen=LONE_CALLS_KEPT)
        self._metrics = metrics
        self._holds = holds  # gate this batcher holds while it has work (text)
        self._yields_to = yields_to  # gate this batcher waits on before a batch (images)
        # Threads for the session calls: given (the engine's, lowered for indexing), or K of
        # this batcher's own.
        self._executor = executor or ThreadPoolExecutor(
            policy.max_concurrent_batches, thread_name_prefix=f"{name}-inference"
        )
        self._buffers = BatchBuffers(policy.max_batch_size)
        self._queue: collections.deque[_Entry] = collections.deque()
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.max_concurrent_batches)
        self._in_flight = 0
        self._running_items = 0  # items of the batches in flight
        self._closed = False
        self._loop_task: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._holding = False
        self._depth_listeners: list[Callable[[int], None]] = []
        self._preparing = 0  # items whose requests are being decoded, not queued yet
        # Clients answered lately and not back yet, oldest first. A closed loop's clients come
        # back with their next request (see _returning).
        self._answered: collections.deque[_Answered] = collections.deque()

    # -- public interface -------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher-{self.name}"
            )

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def add_depth_listener(self, listener: Callable[[int], None]) -> None:
        """Called with the queue depth at every change (the multi-process server publishes it
        to the HTTP workers)."""
        self._depth_listeners.append(listener)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def idle(self) -> bool:
        """Nothing queued, running or being decoded for this model: a request arriving now is
        alone (the handler may then decode on the event loop; see serving.layout)."""
        return not self._queue and self._in_flight == 0 and self._preparing == 0

    def check_room(self, n: int) -> None:
        """Raise QueueFullError now if `n` items would not fit: lets a handler refuse before
        spending CPU on decoding images that could not be queued anyway."""
        if self._closed:
            raise BatcherClosedError(f"the {self.name} model is shutting down")
        if len(self._queue) + n > self.policy.max_queue:
            if self._metrics:
                self._metrics.items_rejected.inc(n)
            raise QueueFullError(
                f"the {self.name} queue is full ({len(self._queue)} of {self.policy.max_queue} "
                "items waiting)"
            )

    @contextlib.contextmanager
    def preparing(self, n: int) -> Iterator[None]:
        """Announce `n` items a request is decoding, until the block ends (the handler then
        submits them without awaiting anything in between). A batch about to start on an idle
        model waits briefly for them, so that requests arriving together are batched together
        rather than the first one alone."""
        self._preparing += n
        try:
            yield
        finally:
            self._preparing -= n
            self._changed.set()

    async def submit(self, item: Array) -> Array:
        (result,) = await self.submit_many([item])
        return result

    def submit_many(self, items: Sequence[Array]) -> asyncio.Future[list[Array]]:
        """Queue all items of one request now (or none: a full queue refuses the whole
        request, raising at once); the returned future gives their results in order.
        Cancelling it drops the still-queued items."""
        self.check_room(len(items))
        future: asyncio.Future[list[Array]] = asyncio.get_running_loop().create_future()
        request = _Request(future, len(items))
        now = time.monotonic()
        entries = [_Entry(item, request, i, now) for i, item in enumerate(items)]
        future.add_done_callback(functools.partial(self._on_done, request))
        self._match_returns(len(items))
        if self._may_answer_now(len(entries), now):
            self._answer_now(entries)
            return future
        self._queue.extend(entries)
        self._queue_changed()
        return future

    async def close(self, grace_s: float) -> None:
        """Stop taking items; let queued and running batches finish for up to `grace_s`."""
        self._closed = True
        self._changed.set()
        deadline = time.monotonic() + grace_s
        while (self._queue or self._batch_tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for entry in list(self._queue):
            entry.request.fail(
                BatcherClosedError(f"the {self.name} model shut down before this item ran")
            )
        if self._batch_tasks:
            await asyncio.wait(self._batch_tasks, timeout=max(0.0, deadline - time.monotonic()))

    # -- internals --------------------------------------------------------------------------
    def _queue_changed(self) -> None:
        depth = len(self._queue)
        if self._metrics:
            self._metrics.queue_depth.set(depth)
        for listener in self._depth_listeners:
            listener(depth)
        self._update_hold()
        self._changed.set()

    def _update_hold(self) -> None:
        if self._holds is None:
            return
        busy = bool(self._queue) or self._in_flight > 0
        if busy and not self._holding:
            self._holds.hold()
            self._holding = True
        elif not busy and self._holding:
            self._holds.release()
            self._holding = False

    def _on_done(self, request: _Request, future: asyncio.Future[list[Array]]) -> None:
        """A request cancelled (client gone) or failed leaves the queue at once, so depth stays
        exact; items already taken into a batch run, and their rows are discarded."""
        if not future.cancelled() and future.exception() is None:
            return  # answered: none of its items is queued
        before = len(self._queue)
        kept = [e for e in self._queue if e.request is not request]
        dropped = before - len(kept)
        if not dropped:
            return
        self._queue.clear()
        self._queue.extend(kept)
        if self._metrics:
            if future.cancelled():
                self._metrics.items_dropped_disconnected.inc(dropped)
            else:
                self._metrics.items_dropped_request_failed.inc(dropped)
        self._queue_changed()

    async def _wait_for_items(self) -> bool:
        while not self._queue:
            if self._closed:
                return False
            self._changed.clear()
            await self._changed.wait()
        return True

    async def _wait_to_fill(self) -> None:
        """Give the batch about to start a moment to fill. While other batches run, the oldest
        item waits up to T for N items. Items known to be on their way (`_expected`) are
        waited for up to wait_for_expected_s, busy or idle, until this batch holds its share of
        them: a closed loop of C clients sends its requests in waves (a batch's answers go out
        together, and its clients come back together), and a wave split into a batch of one now
        and the rest behind the next free slot runs the model at its least efficient batch
        size. A lone request never waits: its own client is the only one expected."""
        timeout = self.policy.batch_timeout_s
        expect_s = self.policy.wait_for_expected_s
        if self._in_flight == 0 and not (expect_s > 0 and self._expected() > 0):
            return
        expect_deadline = time.monotonic() + expect_s

        def left_s() -> float:
            # Asked again after every change: the oldest item's T (a cancelled item leaves),
            # the free slots and the items on their way all move while waiting.
            if not self._queue:
                return 0.0
            now = time.monotonic()
            left = 0.0
            if (
                self._in_flight > 0
                and timeout > 0
                and len(self._queue) < self.policy.max_batch_size
            ):
                left = self._queue[0].enqueued + timeout - now
            if expect_s > 0 and len(self._queue) < self._share():
                left = max(left, self._expected_until(expect_deadline) - now)
            return left

        await self._wait_for_changes(left_s)

    def _returning(self, now: float) -> int:
        """Clients answered in the last wait_for_expected_s that have not sent their next item
        yet (a closed loop comes back within milliseconds, or not at all)."""
        answered = self._answered
        while answered and now - answered[0].at > self.policy.wait_for_expected_s:
            answered.popleft()
        return sum(a.not_back for a in answered)

    def _match_returns(self, arrived: int) -> None:
        """Count `arrived` items as the oldest answered clients coming back, whoever sent them:
        a guess that errs towards not waiting."""
        answered = self._answered
        while arrived and answered:
            taken = min(arrived, answered[0].not_back)
            answered[0].not_back -= taken
            arrived -= taken
            if not answered[0].not_back:
                answered.popleft()

    def _expected(self) -> int:
        """Items on their way to the queue: requests being decoded (see `preparing`), or the
        clients of the batches just answered still to come back, whichever is more (most of the
        first are the second)."""
        return max(self._preparing, self._returning(time.monotonic()))

    def _expected_until(self, deadline: float) -> float:
        """When waiting for the expected items ends: at `deadline`, sooner when nothing is
        being decoded and the clients of the batches answered stop being expected."""
        if self._preparing > 0:
            return deadline
        if self._returning(time.monotonic()) > 0:
            return min(deadline, self._answered[-1].at + self.policy.wait_for_expected_s)
        return 0.0

    def _share(self) -> int:
        """The items this batch should hold once the expected ones arrive: all of them up to
        N, or with split_across_slots an even share of every item in the system (queued,
        expected and running) over the K slots — four clients on two slots settle into two
        batches of two, where a free slot taking all it can see would pair a batch of three
        with batches of one."""
        coming = len(self._queue) + self._expected()
        if self.policy.split_across_slots:
            slots = self.policy.max_concurrent_batches
            coming = -(-(coming + self._running_items) // slots)
        return min(self.policy.max_batch_size, coming)

    async def _wait_for_changes(self, left_s: Callable[[], float]) -> None:
        """Wake on every queue change until `left_s()` (asked again after each) is <= 0."""
        while (remaining := left_s()) > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return

    def _batch_size(self) -> int:
        n = self.policy.max_batch_size
        if self.policy.split_across_slots:
            free = self.policy.max_concurrent_batches - self._in_flight
            n = min(n, max(1, -(-len(self._queue) // max(1, free))))
        return n

    def _take_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        timeout = self.policy.queue_timeout_s
        now = time.monotonic()
        size = self._batch_size()
        while self._queue and len(batch) < size:
            entry = self._queue.popleft()
            if entry.request.future.cancelled():
                continue  # its client left; _on_done counts it
            # Checked before "failed": the items of a request share their enqueue time, so
            # when one times out its queued siblings do too, and each counts as timed out.
            if timeout is not None and now - entry.enqueued > timeout:
                entry.request.fail(
                    QueueTimeoutError(
                        f"waited {now - entry.enqueued:.3f} s in the {self.name} queue, "
                        "longer than "
                        f"the queue timeout of {timeout:.3f} s"
                    )
                )
                if self._metrics:
                    self._metrics.items_dropped_timeout.inc()
                continue
            if entry.request.future.done():  # its request failed: it would run for nobody
                if self._metrics:
                    self._metrics.items_dropped_request_failed.inc()
                continue
            batch.append(entry)
        self._queue_changed()
        return batch

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                if not await self._wait_for_items():
                    self._slots.release()
                    return
                if self._yields_to is not None:
                    await self._yields_to.wait_clear()
                await self._wait_to_fill()
                batch = self._take_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            lone = self._in_flight == 0 and not self._queue and self._expected() == 0
            alone = lone and self._may_run_alone()
            self._started(batch)
            started = time.monotonic()
            # The session call is handed to its thread here, before anything else: the
            # bookkeeping in _run (metrics) overlaps the call instead of delaying it by a turn
            # of the event loop.
            if lone and self._may_call_inline():
                outputs = self._call_inline(batch, alone)
            else:
                outputs = self._start_call(batch, alone, lone)
            task = asyncio.get_running_loop().create_task(self._run(batch, outputs, started, alone))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    def _may_answer_now(self, n: int, now: float) -> bool:
        """Answer a request inside submit_many, its batch called on the event loop at once?
        When the policy says so (inline_in_submit), its batch would be lone (nothing queued,
        running or expected but its own items, the gate clear) and may be called on the loop
        (_may_call_inline). The batch loop would make the same call a turn or two of the
        event loop later — its wake-up, a task for the batch, the waiter's wake-up — which a
        lone request on an accelerator pays for in its round trip. Measured on the simulated
        accelerator at W=2 (BENCHMARKS.md "compare"): a lone thumbnail's p50 4.31 → 3.93 ms;
        at W=1, where the loop also serves HTTP, 4 clients lost a quarter of their req/s."""
        return (
            self.policy.inline_in_submit
            and not self._queue
            and self._in_flight == 0
            and n <= self.policy.max_batch_size
            and self._preparing <= n  # its own items at most (the handler's `preparing`)
            and (self.policy.wait_for_expected_s <= 0 or self._returning(now) == 0)
            and not (self._yields_to is not None and self._yields_to.held)
            and not self._closed
            and self._may_call_inline()
        )

    def _answer_now(self, batch: list[_Entry]) -> None:
        """A lone batch called on the event loop and answered before submit_many returns."""
        alone = self._may_run_alone()
        self._started(batch)
        started = time.monotonic()
        self._settle(batch, self._call_inline(batch, alone), started, alone)

    def _started(self, batch: list[_Entry]) -> None:
        self._in_flight += 1
        self._running_items += len(batch)
        self._update_hold()
        if self._metrics:
            self._metrics.batches_in_flight.set(self._in_flight)

    def _start_call(self, batch: list[_Entry], alone: bool, lone: bool) -> asyncio.Future[Array]:
        loop = asyncio.get_running_loop()
        items = [e.item for e in batch]
        try:
            return loop.run_in_executor(self._executor, self._stack_and_run, items, alone, lone)
        except Exception as exc:  # an executor already shut down: this batch fails, not the loop
            failed: asyncio.Future[Array] = loop.create_future()
            failed.set_exception(exc)
            return failed

    def _may_run_alone(self) -> bool:
        """Take the every-core session for a lone batch? Always, if the model has one, unless
        the policy keeps it for a server with no other request in it."""
        if self._run_alone is None:
            return False
        if not self.policy.alone_only_in_idle_server:
            return True
        return self._alone_allowed is not None and self._alone_allowed()

    def _may_call_inline(self) -> bool:
        """Call a lone batch on the event loop? Only while the last LONE_CALLS_KEPT lone calls
        all took at most `inline_call_max_s` (an accelerator's batch-1 call: ~1 ms, where the
        hops to a thread and back cost ~0.3 ms of a lone request's round trip on this VM), so
        the loop is never held longer than the model has lately taken: one slow call sends the
        next ones back to the thread until it has aged out. And only while no other request is
        in the server (`inline_allowed`): at 4 clients a batch is "lone" to this batcher
        whenever the others are still being parsed or decoded, and they need the loop."""
        limit = self.policy.inline_call_max_s
        calls = self._lone_calls
        return (
            limit > 0
            and self._inline_allowed is not None
            and len(calls) == calls.maxlen
            and max(calls) <= limit
            and self._inline_allowed()
        )

    def _call_inline(self, batch: list[_Entry], alone: bool) -> asyncio.Future[Array]:
        call: asyncio.Future[Array] = asyncio.get_running_loop().create_future()
        try:
            call.set_result(self._stack_and_run([e.item for e in batch], alone, True))
        except Exception as exc:  # the batch fails (in _run), not the batch loop
            call.set_exception(exc)
        if self._metrics:
            self._metrics.batches_on_event_loop.inc()
        return call

    def _stack_and_run(self, items: list[Array], alone: bool, lone: bool) -> Array:
        run = self._run_alone if alone and self._run_alone is not None else self._run_batch
        batch = self._buffers.stack(items)
        started = time.perf_counter()
        try:
            return detached(run(batch), batch)
        finally:
            if lone:
                self._lone_calls.append(time.perf_counter() - started)

    async def _run(
        self, batch: list[_Entry], call: asyncio.Future[Array], started: float, alone: bool
    ) -> None:
        try:
            with contextlib.suppress(Exception):
                await call  # its result or error is read in _settle
        finally:
            self._settle(batch, call, started, alone)
            self._slots.release()
            self._changed.set()

    def _settle(
        self, batch: list[_Entry], call: asyncio.Future[Array], started: float, alone: bool
    ) -> None:
        """The batch's call is over (`call` done, or cancelled with the batch loop): answer or
        fail its requests, record it, and count it out of the batches in flight."""
        m = self._metrics
        if m:
            m.batch_size.observe(len(batch))
            if alone:
                m.batches_alone.inc()
            for entry in batch:
                m.queue_wait.observe(started - entry.enqueued)
        try:
            if not call.done() or call.cancelled():
                raise RuntimeError("the call was cancelled or did not return")
            outputs = call.result()
            if len(outputs) != len(batch):
                raise RuntimeError(f"model returned {len(outputs)} rows for {len(batch)} items")
        except Exception as exc:
            log.error("%s batch of %d items failed: %s", self.name, len(batch), exc)
            if m:
                m.batches_failed.inc()
                m.items_failed.inc(len(batch))
            error = BatchFailedError(f"{self.name} inference failed for this batch: {exc}")
            for entry in batch:
                entry.request.fail(error)
        else:
            finished = time.monotonic()
            if m:
                m.inference.observe(finished - started)
                m.batches.inc()
                m.items.inc(len(batch))
            for entry, output in zip(batch, outputs, strict=True):
                if m:
                    m.item_latency.observe(finished - entry.enqueued)
                entry.request.answer(entry.index, output)
            if self.policy.wait_for_expected_s > 0:
                self._answered.append(_Answered(finished, len(batch)))
        finally:
            self._in_flight -= 1
            self._running_items -= len(batch)
            self._update_hold()
            if m:
                m.batches_in_flight.set(self._in_flight)
