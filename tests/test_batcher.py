"""The dynamic batcher with a fake slow model (a real one adds nothing to what is tested here)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from photofield_ai.batcher import (
    BatcherClosedError,
    BatchFailedError,
    BatchPolicy,
    DynamicBatcher,
    PriorityGate,
    QueueFullError,
    QueueTimeoutError,
)
from photofield_ai.batcher.batcher import LONE_CALLS_KEPT
from photofield_ai.metrics import Metrics
from tests.conftest import wait_until_async

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SlowModel:
    """Doubles its input after `delay` seconds — or, when `held`, once the test calls
    `release()` — and records every batch it started. A held model lets a test set up "a batch is
    running" exactly, instead of guessing how long a sleep makes that true."""

    def __init__(
        self, delay: float = 0.0, fail_on: float | None = None, held: bool = False
    ) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self._go = threading.Event()
        if not held:
            self._go.set()
        self.batches: list[list[float]] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        values = [float(v) for v in batch[:, 0]]
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.batches.append(values)  # in the order the batches started
        try:
            assert self._go.wait(30), "the test never released the model"
            time.sleep(self.delay)
            if self.fail_on is not None and self.fail_on in values:
                raise RuntimeError("injected failure")
            return batch * 2
        finally:
            with self._lock:
                self.running -= 1

    def release(self) -> None:
        self._go.set()

    def hold(self) -> None:
        self._go.clear()

    async def until_running(self, count: int = 1) -> None:
        await wait_until_async(lambda: self.running == count, f"{count} batch(es) run")


def item(value: float) -> np.ndarray:
    return np.array([value], dtype=np.float32)


def policy(**overrides: object) -> BatchPolicy:
    """A policy for these tests (the server's defaults live in serving.layout)."""
    values: dict[str, object] = {
        "max_batch_size": 32,
        "batch_timeout_s": 0.002,
        "max_concurrent_batches": 1,
        "max_queue": 1024,
        "queue_timeout_s": None,
        **overrides,
    }
    return BatchPolicy(**values)  # type: ignore[arg-type]


def make(
    model: Callable[[np.ndarray], np.ndarray], metrics: Metrics | None = None, **overrides: object
) -> DynamicBatcher:
    batcher = DynamicBatcher(
        "visual",
        model,
        policy(**overrides),
        metrics.for_batcher("visual") if metrics else None,
    )
    batcher.start()
    return batcher


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": "visual", **labels})
    return 0.0 if value is None else value


async def test_lone_item_is_not_delayed_by_the_batch_timeout() -> None:
    batcher = make(SlowModel(), batch_timeout_s=5.0, max_batch_size=32)
    started = time.monotonic()
    assert (await batcher.submit(item(3)))[0] == 6
    assert time.monotonic() - started < 2.5, "an idle model must start a batch at once"
    await batcher.close(1)


async def test_batches_never_exceed_n_and_results_keep_their_order() -> None:
    model = SlowModel(delay=0.02)
    batcher = make(model, max_batch_size=8)
    results = await asyncio.gather(*(batcher.submit(item(i)) for i in range(50)))
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(50)]
    assert all(len(b) <= 8 for b in model.batches)
    assert sum(len(b) for b in model.batches) == 50
    many = await batcher.submit_many([item(i) for i in range(20)])
    assert [float(r[0]) for r in many] == [2.0 * i for i in range(20)]
    await batcher.close(1)


async def test_items_pile_up_while_a_batch_runs() -> None:
    model = SlowModel(held=True)
    batcher = make(model, max_batch_size=16)
    first = asyncio.ensure_future(batcher.submit(item(0)))
    await model.until_running()
    rest = [asyncio.ensure_future(batcher.submit(item(i))) for i in range(1, 11)]
    await wait_until_async(lambda: batcher.queue_depth == 10, "all ten are queued")
    model.release()
    await asyncio.gather(first, *rest)
    assert model.batches == [[0.0], [float(i) for i in range(1, 11)]]
    await batcher.close(1)


async def test_failing_batch_fails_only_its_items() -> None:
    metrics = Metrics()
    model = SlowModel(fail_on=-1)
    batcher = make(model, metrics)
    with pytest.raises(BatchFailedError, match="inference failed"):
        await batcher.submit(item(-1))
    assert (await batcher.submit(item(2)))[0] == 4
    assert sample(metrics, "photofield_ai_batches_failed_total") == 1
    assert sample(metrics, "photofield_ai_items_failed_total") == 1
    assert sample(metrics, "photofield_ai_batches_processed_total") == 1
    await batcher.close(1)


async def test_wrong_row_count_from_the_model_fails_the_batch() -> None:
    batcher = make(lambda batch: batch[:1])
    with pytest.raises(BatchFailedError, match="1 rows for 3 items"):
        await batcher.submit_many([item(1), item(2), item(3)])
    await batcher.close(1)


async def test_cancelled_items_are_dropped_before_they_run() -> None:
    metrics = Metrics()
    model = SlowModel(held=True)
    batcher = make(model, metrics)
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await model.until_running()
    gone = asyncio.ensure_future(batcher.submit_many([item(2), item(3)]))
    await wait_until_async(lambda: batcher.queue_depth == 2, "both are queued")
    assert sample(metrics, "photofield_ai_queue_depth") == 2
    gone.cancel()
    await asyncio.sleep(0)
    assert batcher.queue_depth == 0
    assert sample(metrics, "photofield_ai_queue_depth") == 0, "the gauge must be exact"
    model.release()
    await first
    assert (await batcher.submit(item(4)))[0] == 8
    assert [2.0] not in model.batches and [2.0, 3.0] not in model.batches
    assert sample(metrics, "photofield_ai_items_dropped_total", reason="client_disconnected") == 2
    await batcher.close(1)


async def test_full_queue_refuses_at_once() -> None:
    metrics = Metrics()
    model = SlowModel(held=True)
    batcher = make(model, metrics, max_queue=4, max_batch_size=2)
    running = asyncio.ensure_future(batcher.submit(item(0)))
    await model.until_running()
    queued = [asyncio.ensure_future(batcher.submit(item(i))) for i in range(1, 5)]
    await wait_until_async(lambda: batcher.queue_depth == 4, "the queue is full")
    # Refused while the model is still held: the answer cannot have waited for room.
    with pytest.raises(QueueFullError, match="queue is full"):
        await asyncio.wait_for(batcher.submit(item(99)), 5)
    with pytest.raises(QueueFullError):  # a request is admitted whole or not at all
        await asyncio.wait_for(batcher.submit_many([item(7), item(8)]), 5)
    assert sample(metrics, "photofield_ai_items_rejected_total") == 3
    model.release()
    await asyncio.gather(running, *queued)
    await batcher.close(1)


async def test_queue_timeout_answers_without_running() -> None:
    metrics = Metrics()
    model = SlowModel(held=True)
    batcher = make(model, metrics, queue_timeout_s=0.1)
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await model.until_running()
    second = asyncio.ensure_future(batcher.submit(item(2)))
    await wait_until_async(lambda: batcher.queue_depth == 1, "the second is queued")
    await asyncio.sleep(0.15)  # longer than the queue timeout (any longer is as good)
    model.release()
    with pytest.raises(QueueTimeoutError, match="longer than the queue timeout"):
        await second
    await first
    assert model.batches == [[1.0]]
    assert sample(metrics, "photofield_ai_items_dropped_total", reason="queue_timeout") == 1
    await batcher.close(1)


async def test_k_batches_run_concurrently() -> None:
    model = SlowModel(held=True)
    batcher = make(model, max_batch_size=2, max_concurrent_batches=3, batch_timeout_s=0)
    pending = asyncio.gather(*(batcher.submit(item(i)) for i in range(6)))
    await model.until_running(3)
    model.release()
    await pending
    assert model.max_running == 3
    await batcher.close(1)


@pytest.mark.parametrize("timeout_s", [0.0, 30.0])
async def test_busy_model_waits_up_to_t_for_a_fuller_batch(timeout_s: float) -> None:
    """With a batch running and room for another, a lone item waits up to T for company;
    a full batch leaves at once. With T = 0 the same item leaves alone."""
    model = SlowModel(held=True)
    batcher = make(model, max_batch_size=3, max_concurrent_batches=2, batch_timeout_s=timeout_s)
    first = asyncio.ensure_future(batcher.submit(item(0)))  # idle: runs at once
    await model.until_running()
    second = asyncio.ensure_future(batcher.submit(item(1)))
    if timeout_s:
        await asyncio.sleep(0.2)  # time enough for a batcher that does not wait to start it
        assert model.running == 1 and batcher.queue_depth == 1, "it should wait for company"
        third = [asyncio.ensure_future(batcher.submit(item(i))) for i in (2, 3)]
        await model.until_running(2)  # full: it leaves well before T
    else:
        await model.until_running(2)
        third = [asyncio.ensure_future(batcher.submit(item(i))) for i in (2, 3)]
    model.release()
    await asyncio.gather(first, second, *third)
    assert model.batches[0] == [0.0]
    assert sorted(model.batches[1]) == ([1.0, 2.0, 3.0] if timeout_s else [1.0])
    await batcher.close(1)


async def test_metrics_count_batches_and_items() -> None:
    metrics = Metrics()
    batcher = make(SlowModel(delay=0.05), metrics, max_batch_size=4)
    await asyncio.gather(*(batcher.submit(item(i)) for i in range(10)))
    assert sample(metrics, "photofield_ai_items_processed_total") == 10
    assert sample(metrics, "photofield_ai_batch_size_sum") == 10
    assert sample(metrics, "photofield_ai_batch_size_count") == sample(
        metrics, "photofield_ai_batches_processed_total"
    )
    assert sample(metrics, "photofield_ai_batches_in_flight") == 0
    assert sample(metrics, "photofield_ai_queue_depth") == 0
    await batcher.close(1)


async def test_image_batches_yield_to_text_work() -> None:
    gate = PriorityGate(max_wait_s=30)
    images = SlowModel()
    visual = DynamicBatcher("visual", images, policy(), yields_to=gate)
    texts = SlowModel(held=True)
    textual = DynamicBatcher("textual", texts, policy(), holds=gate)
    visual.start()
    textual.start()
    text = asyncio.ensure_future(textual.submit(item(1)))
    await texts.until_running()
    assert gate.held
    image = asyncio.ensure_future(visual.submit(item(2)))
    await asyncio.sleep(0.2)  # time enough for an image batch that does not yield to start
    assert not image.done() and images.batches == [], "images wait while text runs"
    texts.release()
    await text
    await image
    assert not gate.held
    await visual.close(1)
    await textual.close(1)


async def test_close_lets_queued_work_finish_then_refuses() -> None:
    model = SlowModel(delay=0.05)
    batcher = make(model, max_batch_size=2)
    pending = [asyncio.ensure_future(batcher.submit(item(i))) for i in range(6)]
    await model.until_running()
    await batcher.close(grace_s=30)
    assert [float((await p)[0]) for p in pending] == [2.0 * i for i in range(6)]
    with pytest.raises(BatcherClosedError):
        await batcher.submit(item(1))


async def test_close_after_grace_fails_what_is_left() -> None:
    model = SlowModel(held=True)
    batcher = make(model, max_batch_size=1)
    pending = [asyncio.ensure_future(batcher.submit(item(i))) for i in range(4)]
    await model.until_running()
    await batcher.close(grace_s=0.2)
    # The three still queued are told the model shut down; the running one may still finish.
    outcomes = await asyncio.gather(*pending[1:], return_exceptions=True)
    assert all(isinstance(o, BatcherClosedError) for o in outcomes), outcomes
    model.release()
    await model.until_running(0)
    assert model.batches == [[0.0]]


async def test_a_flood_of_text_cannot_starve_images() -> None:
    gate = PriorityGate(max_wait_s=0.2)
    visual = DynamicBatcher("visual", SlowModel(), policy(), yields_to=gate)
    visual.start()
    gate.hold()  # text busy for as long as this test runs
    started = time.monotonic()
    await visual.submit(item(1))
    assert time.monotonic() - started >= 0.15
    gate.release()
    await visual.close(1)


async def test_a_batch_alone_runs_on_the_every_core_layout_and_a_busy_queue_does_not() -> None:
    """The adaptive layout: a batch that starts with nothing else running or waiting takes
    `run_alone` (every core); batches of a busy queue take the throughput layout."""
    busy, alone = SlowModel(delay=0.2), SlowModel(delay=0.2)
    metrics = Metrics()
    batcher = DynamicBatcher(
        "visual",
        busy,
        policy(max_concurrent_batches=2, max_batch_size=4),
        metrics.for_batcher("visual"),
        run_alone=alone,
    )
    batcher.start()
    assert (await batcher.submit(item(1)))[0] == 2
    assert (alone.batches, busy.batches) == ([[1.0]], [])
    # Ten at once: the first two batches start with more waiting, so they take the busy layout;
    # whatever is left once both are done has the device to itself again.
    await asyncio.gather(*(batcher.submit(item(i)) for i in range(10)))
    assert sorted(busy.batches[:2]) == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    ran = sorted(v for b in busy.batches + alone.batches[1:] for v in b)
    assert ran == [float(i) for i in range(10)]
    assert sample(metrics, "photofield_ai_batches_alone_total") == len(alone.batches)
    await batcher.close(1)


async def test_a_spinning_every_core_session_takes_a_lone_batch_only_in_an_idle_server() -> None:
    """alone_only_in_idle_server: a lone batch takes `run_alone` while `alone_allowed` says no
    other request is in the server; otherwise the busy layout, as at a busy queue."""
    busy, alone = SlowModel(delay=0.01), SlowModel(delay=0.01)
    others = [0]
    batcher = DynamicBatcher(
        "visual",
        busy,
        policy(max_concurrent_batches=2, alone_only_in_idle_server=True),
        run_alone=alone,
        alone_allowed=lambda: others[0] == 0,
    )
    batcher.start()
    await batcher.submit(item(1))
    others[0] = 1  # another request in the server (a /faces upload, a decode)
    await batcher.submit(item(2))
    others[0] = 0
    await batcher.submit(item(3))
    assert (alone.batches, busy.batches) == ([[1.0], [3.0]], [[2.0]])
    await batcher.close(1)
    # Without the policy a lone batch always takes it, whatever the server holds.
    busy, alone = SlowModel(delay=0.01), SlowModel(delay=0.01)
    batcher = DynamicBatcher("visual", busy, policy(), run_alone=alone, alone_allowed=lambda: False)
    batcher.start()
    await batcher.submit(item(1))
    assert (alone.batches, busy.batches) == ([[1.0]], [])
    await batcher.close(1)


def split_policy(**overrides: object) -> dict[str, Any]:
    """The adaptive CPU layout's queue policy: two single-threaded slots, waves split evenly."""
    values: dict[str, Any] = {
        "max_batch_size": 8,
        "batch_timeout_s": 0.0,
        "max_concurrent_batches": 2,
        "split_across_slots": True,
        "wait_for_expected_s": 1.0,  # the tests check "still waiting" at 0.2 s
        **overrides,
    }
    return values


async def test_an_idle_model_waits_for_a_wave_being_decoded_and_splits_it() -> None:
    """Four requests arrive together: the first one queued does not start alone while three are
    still being decoded; the wave runs as two batches of two, one per slot."""
    model = SlowModel(held=True)
    batcher = make(model, **split_policy())
    with batcher.preparing(3):
        first = asyncio.ensure_future(batcher.submit(item(0)))
        await asyncio.sleep(0.2)  # time enough for a batcher that does not wait to start it
        assert model.running == 0 and batcher.queue_depth == 1
        rest = [asyncio.ensure_future(batcher.submit(item(i))) for i in (1, 2, 3)]
    await model.until_running(2)
    model.release()
    await asyncio.gather(first, *rest)
    assert sorted(map(sorted, model.batches)) == [[0.0, 1.0], [2.0, 3.0]]
    await batcher.close(1)


@pytest.mark.parametrize("coming", [0, 1])
async def test_a_busy_model_waits_for_its_share_of_items_being_decoded(coming: int) -> None:
    """One slot busy, one free (a closed loop's wave half back): an item queued while another
    request is still being decoded waits for it, and the two run as one batch; with nothing being
    decoded it leaves at once (T = 0), a batch of one."""
    model = SlowModel(held=True)
    batcher = make(model, **split_policy())
    running = asyncio.ensure_future(batcher.submit(item(9)))  # idle, nothing coming: at once
    await model.until_running()
    with batcher.preparing(coming):
        first = asyncio.ensure_future(batcher.submit(item(0)))
        if coming:
            await asyncio.sleep(0.2)
            assert model.running == 1 and batcher.queue_depth == 1, "it should wait"
            second = asyncio.ensure_future(batcher.submit(item(1)))
    if not coming:
        await model.until_running(2)
        second = asyncio.ensure_future(batcher.submit(item(1)))
    await model.until_running(2)
    model.release()
    await asyncio.gather(running, first, second)
    assert model.batches[1] == ([0.0, 1.0] if coming else [0.0])
    await batcher.close(1)


async def test_the_wait_for_items_being_decoded_is_bounded() -> None:
    """Requests that never finish decoding hold the batch no longer than the policy says."""
    model = SlowModel()
    batcher = make(model, **split_policy(wait_for_expected_s=0.3))
    with batcher.preparing(3):
        started = time.monotonic()
        await batcher.submit(item(0))
        waited = time.monotonic() - started
    assert 0.3 <= waited < 5
    await batcher.close(1)


async def answer_a_wave(batcher: DynamicBatcher, model: SlowModel, size: int) -> None:
    """Have the idle model answer one batch of `size` items (K = 1, all queued at once), then
    hold it again."""
    model.release()
    await batcher.submit_many([item(-2)] * size)
    assert model.batches == [[-2.0] * size]
    model.batches.clear()
    model.hold()


@pytest.mark.parametrize("wave", [1, 2])
async def test_the_clients_of_the_batch_just_answered_are_expected_back(wave: int) -> None:
    """A closed loop: the batch of two just answered, one of its clients is back. Its item waits
    for the other client rather than running alone; after a batch of one, nobody else is
    expected and the item runs at once."""
    model = SlowModel(held=True)
    batcher = make(model, **split_policy(max_concurrent_batches=1))
    await answer_a_wave(batcher, model, wave)
    first = asyncio.ensure_future(batcher.submit(item(0)))
    if wave == 2:
        await asyncio.sleep(0.2)
        assert model.running == 0 and batcher.queue_depth == 1, "it should wait"
        second = asyncio.ensure_future(batcher.submit(item(1)))
    await model.until_running()
    if wave == 1:
        second = asyncio.ensure_future(batcher.submit(item(1)))
    model.release()
    await asyncio.gather(first, second)
    assert model.batches[0] == ([0.0, 1.0] if wave == 2 else [0.0])
    await batcher.close(1)


async def test_clients_that_do_not_come_back_are_waited_for_briefly() -> None:
    """Of a batch of three, one client comes back: its item starts once the wait for the others
    (counted from the answer) is over, not later."""
    model = SlowModel(held=True)
    batcher = make(model, **split_policy(max_concurrent_batches=1, wait_for_expected_s=0.3))
    await answer_a_wave(batcher, model, 3)
    model.release()
    started = time.monotonic()
    await batcher.submit(item(0))
    assert time.monotonic() - started < 0.3 + 1
    assert model.batches[-1] == [0.0]
    await batcher.close(1)


async def test_idle_means_nothing_queued_running_or_being_decoded() -> None:
    """What a handler asks before decoding a lone image on the event loop."""
    model = SlowModel(held=True)
    batcher = make(model)
    assert batcher.idle
    with batcher.preparing(1):
        assert not batcher.idle
    assert batcher.idle
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await model.until_running()
    assert not batcher.idle  # a batch is running
    second = asyncio.ensure_future(batcher.submit(item(2)))
    await wait_until_async(lambda: batcher.queue_depth == 1, "the second item is queued")
    assert not batcher.idle
    model.release()
    assert [float(r[0]) for r in await asyncio.gather(first, second)] == [2.0, 4.0]
    await wait_until_async(lambda: batcher.in_flight == 0, "the batches are done")
    assert batcher.idle
    await batcher.close(1)


def test_a_batch_of_one_is_its_item_with_a_batch_axis_not_a_copy() -> None:
    from photofield_ai.batcher.batcher import stack

    row = np.arange(12, dtype=np.float32).reshape(3, 4)
    one = stack([row])
    assert one.shape == (1, 3, 4) and np.shares_memory(one, row)
    np.testing.assert_array_equal(one[0], row)
    crop = np.arange(60, dtype=np.uint8).reshape(5, 12)[1:4, 2:6]  # a crop: not contiguous
    one_crop = stack([crop])
    assert one_crop.flags.c_contiguous and one_crop.shape == (1, 3, 4)
    np.testing.assert_array_equal(one_crop[0], crop)
    two = stack([row, row + 1])
    assert two.shape == (2, 3, 4) and not np.shares_memory(two, row)
    np.testing.assert_array_equal(two[1], row + 1)


async def test_a_call_that_cannot_start_fails_its_batch_and_not_the_loop() -> None:
    """The session call is handed to its thread by the batch loop itself: an executor that
    refuses (shut down) fails that batch, and the loop goes on to the next one."""
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(1)
    batcher = DynamicBatcher("visual", SlowModel(), policy(), executor=executor)
    batcher.start()
    assert (await batcher.submit(item(1)))[0] == 2
    executor.shutdown()
    for value in (2, 3):
        with pytest.raises(BatchFailedError, match="shutdown"):
            await asyncio.wait_for(batcher.submit(item(value)), 5)
    assert batcher.idle
    await batcher.close(1)


def test_batches_of_one_thread_reuse_one_buffer_and_other_threads_get_their_own() -> None:
    """Each batch stacked into a new array is a fresh mapping page-faulted in per batch (the
    mmap threshold is fixed at 256 KB); the buffer stays, and the copy is all that is left."""
    from concurrent.futures import ThreadPoolExecutor

    from photofield_ai.batcher.batcher import BatchBuffers

    buffers = BatchBuffers(rows=4)
    rows = [np.full((3, 5), v, dtype=np.float32) for v in range(4)]
    first = buffers.stack(rows[:3])
    second = buffers.stack(rows[1:3])
    assert np.shares_memory(first, second), "the second batch of the thread reused the buffer"
    np.testing.assert_array_equal(second, np.stack(rows[1:3]))
    with ThreadPoolExecutor(1) as other:
        elsewhere = other.submit(buffers.stack, rows[:2]).result()
    assert not np.shares_memory(elsewhere, first), "another thread has its own buffer"
    np.testing.assert_array_equal(elsewhere, np.stack(rows[:2]))
    # A batch larger than the buffer, or items of another shape or dtype, get a new one.
    larger = buffers.stack(rows + rows[:2])
    assert larger.shape == (6, 3, 5) and not np.shares_memory(larger, first)
    ints = buffers.stack([np.ones((2, 2), np.int32), np.zeros((2, 2), np.int32)])
    assert ints.dtype == np.int32 and ints.shape == (2, 2, 2)
    assert ints[0].sum() == 4 and ints[1].sum() == 0
    lone = buffers.stack(rows[:1])
    assert np.shares_memory(lone, rows[0]), "a batch of one is still a view of its item"


async def test_rows_that_are_views_of_the_batch_survive_the_next_batch_of_the_thread() -> None:
    """A run function may hand back a slice of its input (the batch buffer). Those rows are
    answered after the call returns, when the thread may already be stacking the next batch
    into the same buffer: they must be copies by then."""

    def first_column(batch: np.ndarray) -> np.ndarray:
        return batch[:, :1]  # a view of the buffer

    batcher = make(first_column, max_concurrent_batches=1)
    early = await batcher.submit_many([item(1.0), item(2.0)])
    later = await batcher.submit_many([item(3.0), item(4.0)])
    assert [float(r[0]) for r in later] == [3.0, 4.0]
    assert [float(r[0]) for r in early] == [1.0, 2.0], "the second batch overwrote the first"
    await batcher.close(1)


def test_a_batch_larger_than_the_buffer_cap_is_stacked_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Big items (640² face-detection inputs) are not kept per thread past the cap."""
    from photofield_ai.batcher import batcher as module

    monkeypatch.setattr(module, "BATCH_BUFFER_MAX_BYTES", 3 * 60)
    buffers = module.BatchBuffers(rows=8)
    rows = [np.full((15,), v, dtype=np.float32) for v in range(4)]  # 60 bytes each
    three = buffers.stack(rows[:3])
    buffer = buffers.stack(rows[:2]).base
    assert buffer is not None and len(buffer) == 3, "the buffer holds what the cap allows"
    assert np.shares_memory(three, buffers.stack(rows[1:4]))
    four = buffers.stack(rows)
    assert not np.shares_memory(four, three)
    np.testing.assert_array_equal(four, np.stack(rows))


async def test_a_failed_request_takes_its_still_queued_items_out_of_the_queue() -> None:
    """A request fails with its first failing item; the items it has still queued would only
    compute rows nobody reads, so they leave the queue instead of running."""
    metrics = Metrics()
    model = SlowModel(fail_on=-1, held=True)
    batcher = make(model, metrics, max_batch_size=2, batch_timeout_s=0)
    first = asyncio.ensure_future(batcher.submit(item(0)))
    await model.until_running()
    request = asyncio.ensure_future(batcher.submit_many([item(1), item(-1), item(3), item(4)]))
    await wait_until_async(lambda: batcher.queue_depth == 4, "the request is queued")
    model.release()
    with pytest.raises(BatchFailedError, match="inference failed"):
        await request
    await first
    await wait_until_async(lambda: batcher.queue_depth == 0, "the queue is empty")
    assert (await batcher.submit(item(5)))[0] == 10
    assert model.batches == [[0.0], [1.0, -1.0], [5.0]], "items 3 and 4 never ran"
    assert sample(metrics, "photofield_ai_queue_depth") == 0
    dropped = "photofield_ai_items_dropped_total"
    assert sample(metrics, dropped, reason="request_failed") == 2
    assert sample(metrics, dropped, reason="client_disconnected") == 0
    await batcher.close(1)


async def test_every_item_of_a_request_that_timed_out_counts_as_timed_out() -> None:
    metrics = Metrics()
    model = SlowModel(held=True)
    batcher = make(model, metrics, queue_timeout_s=0.1)
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await model.until_running()
    late = asyncio.ensure_future(batcher.submit_many([item(2), item(3), item(4)]))
    await wait_until_async(lambda: batcher.queue_depth == 3, "the request is queued")
    await asyncio.sleep(0.15)  # longer than the queue timeout
    model.release()
    with pytest.raises(QueueTimeoutError):
        await late
    await first
    assert model.batches == [[1.0]]
    dropped = "photofield_ai_items_dropped_total"
    assert sample(metrics, dropped, reason="queue_timeout") == 3
    assert sample(metrics, dropped, reason="request_failed") == 0
    assert batcher.queue_depth == 0
    await batcher.close(1)


async def test_one_request_spread_over_several_batches_gets_its_rows_in_order() -> None:
    model = SlowModel(held=True)
    batcher = make(model, max_batch_size=3, batch_timeout_s=0, max_concurrent_batches=2)
    blocker = asyncio.ensure_future(batcher.submit(item(100)))
    await model.until_running()
    request = asyncio.ensure_future(batcher.submit_many([item(v) for v in range(7)]))
    await wait_until_async(lambda: batcher.queue_depth == 4, "one batch of 3 started")
    model.release()
    rows = await request
    assert [float(r[0]) for r in rows] == [2.0 * v for v in range(7)]
    assert [len(b) for b in model.batches] == [1, 3, 3, 1]
    await blocker
    await batcher.close(1)


class ThreadRecordingModel(SlowModel):
    """A SlowModel that also records which thread ran each batch."""

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        super().__init__(delay, fail_on)
        self.threads: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return super().__call__(batch)


def make_inline(
    model: Callable[[np.ndarray], np.ndarray],
    metrics: Metrics | None = None,
    allowed: Callable[[], bool] = lambda: True,
    **overrides: object,
) -> DynamicBatcher:
    """The accelerator layout's batcher: lone batches may be called on the event loop."""
    batcher = DynamicBatcher(
        "visual",
        model,
        policy(**{"inline_call_max_s": 0.2, "inline_in_submit": True, **overrides}),
        metrics.for_batcher("visual") if metrics else None,
        inline_allowed=allowed,
    )
    batcher.start()
    return batcher


async def lone_calls(batcher: DynamicBatcher, values: range) -> None:
    for value in values:
        assert (await batcher.submit(item(value)))[0] == 2 * value


async def test_a_lone_batch_runs_on_the_event_loop_once_the_recent_lone_calls_were_fast() -> None:
    """Accelerator layout: after LONE_CALLS_KEPT lone calls within inline_call_max_s, the next
    lone batch is called on the event loop itself (no hops); counted in /metrics."""
    model, metrics = ThreadRecordingModel(delay=0.001), Metrics()
    batcher = make_inline(model, metrics)
    loop_thread = threading.get_ident()
    await lone_calls(batcher, range(LONE_CALLS_KEPT + 3))
    on_loop = [t == loop_thread for t in model.threads]
    assert on_loop == [False] * LONE_CALLS_KEPT + [True] * 3
    assert sample(metrics, "photofield_ai_batches_on_event_loop_total") == 3
    assert sample(metrics, "photofield_ai_batches_processed_total") == LONE_CALLS_KEPT + 3
    await batcher.close(1)


async def test_one_slow_lone_call_sends_the_next_ones_back_to_the_thread() -> None:
    model = ThreadRecordingModel(delay=0.001)
    batcher = make_inline(model, inline_call_max_s=0.05)
    loop_thread = threading.get_ident()
    await lone_calls(batcher, range(LONE_CALLS_KEPT + 1))
    assert model.threads[-1] == loop_thread
    model.delay = 0.1  # longer than inline_call_max_s: this one still runs on the loop
    await lone_calls(batcher, range(1))
    model.delay = 0.001
    await lone_calls(batcher, range(LONE_CALLS_KEPT + 1))
    on_loop = [t == loop_thread for t in model.threads[LONE_CALLS_KEPT + 1 :]]
    # The slow call, then LONE_CALLS_KEPT on the thread until it has aged out, then the loop.
    assert on_loop == [True] + [False] * LONE_CALLS_KEPT + [True]
    await batcher.close(1)


async def test_no_call_on_the_event_loop_unless_enabled_allowed_and_lone() -> None:
    loop_thread = threading.get_ident()
    # Not enabled (the CPU layouts: inline_call_max_s 0): never, even when allowed.
    model = ThreadRecordingModel(delay=0.001)
    batcher = make_inline(model, inline_call_max_s=0.0)
    await lone_calls(batcher, range(LONE_CALLS_KEPT + 2))
    assert loop_thread not in model.threads
    await batcher.close(1)
    # No signal to ask (inline_allowed None): never.
    model = ThreadRecordingModel(delay=0.001)
    batcher = make(model, inline_call_max_s=0.2)
    await lone_calls(batcher, range(LONE_CALLS_KEPT + 2))
    assert loop_thread not in model.threads
    await batcher.close(1)
    # Not allowed (another request in the server, or a session unloaded when idle): not
    # while it says so, and at once when it stops.
    allowed = False
    model = ThreadRecordingModel(delay=0.001)
    batcher = make_inline(model, allowed=lambda: allowed)
    await lone_calls(batcher, range(LONE_CALLS_KEPT + 2))
    assert loop_thread not in model.threads
    allowed = True
    await lone_calls(batcher, range(1))
    assert model.threads[-1] == loop_thread
    await batcher.close(1)
    # Not lone (another batch in flight, or items waiting behind it): on the threads.
    allowed = True
    model = ThreadRecordingModel(delay=0.001)
    batcher = make_inline(
        model, allowed=lambda: allowed, max_batch_size=1, max_concurrent_batches=2
    )
    await lone_calls(batcher, range(LONE_CALLS_KEPT))
    model.threads.clear()
    allowed, model.delay = False, 0.05  # the first one on its thread...
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await wait_until_async(lambda: batcher.in_flight == 1, "the first batch runs")
    allowed, model.delay = True, 0.001  # ...and the next ones, allowed, are still not lone
    rest = [asyncio.ensure_future(batcher.submit(item(v))) for v in (2, 3)]
    assert [float(r[0]) for r in await asyncio.gather(first, *rest)] == [2.0, 4.0, 6.0]
    assert len(model.threads) == 3 and loop_thread not in model.threads
    await lone_calls(batcher, range(1))
    assert model.threads[-1] == loop_thread
    await batcher.close(1)


async def test_a_failing_call_on_the_event_loop_fails_its_batch_and_not_the_loop() -> None:
    model = ThreadRecordingModel(delay=0.001, fail_on=-1.0)
    batcher = make_inline(model)
    await lone_calls(batcher, range(LONE_CALLS_KEPT))
    with pytest.raises(BatchFailedError, match="injected failure"):
        await batcher.submit(item(-1))
    assert model.threads[-1] == threading.get_ident()
    await lone_calls(batcher, range(2))
    assert batcher.idle
    await batcher.close(1)


async def test_a_lone_request_allowed_on_the_loop_is_answered_before_submit_returns() -> None:
    """The batch loop's wake-up, the batch's task and the handler's wake-up skipped: the
    future comes back done, counted like any batch, and the batcher is idle again."""
    model, metrics = ThreadRecordingModel(delay=0.001), Metrics()
    batcher = make_inline(model, metrics)
    await lone_calls(batcher, range(LONE_CALLS_KEPT))
    answered = batcher.submit_many([item(4.0), item(5.0)])
    assert answered.done() and [float(r[0]) for r in answered.result()] == [8.0, 10.0]
    assert model.threads[-1] == threading.get_ident() and batcher.idle
    assert sample(metrics, "photofield_ai_batches_on_event_loop_total") == 1
    assert sample(metrics, "photofield_ai_batches_processed_total") == LONE_CALLS_KEPT + 1
    assert sample(metrics, "photofield_ai_items_processed_total") == LONE_CALLS_KEPT + 2
    assert sample(metrics, "photofield_ai_batches_in_flight") == 0
    # Without inline_in_submit (one process: its loop also reads requests) the same lone
    # batch is called on the loop by the batch loop, a turn later.
    later = make_inline(model, inline_in_submit=False)
    await lone_calls(later, range(LONE_CALLS_KEPT))
    pending = later.submit_many([item(7.0)])
    assert not pending.done() and float((await pending)[0][0]) == 14.0
    assert model.threads[-1] == threading.get_ident()
    await later.close(1)
    # A failing call fails the request's future; submit_many itself does not raise.
    model.fail_on = 6.0
    failed = batcher.submit_many([item(6.0)])
    assert failed.done() and isinstance(failed.exception(), BatchFailedError)
    assert batcher.idle
    await batcher.close(1)


async def test_a_request_is_not_answered_at_once_beside_other_work() -> None:
    """Not while another request is being decoded for this model, nor while the gate it
    yields to is held: it is queued, and the batch loop serves it as before."""
    model = ThreadRecordingModel(delay=0.001)
    batcher = make_inline(model)
    await lone_calls(batcher, range(LONE_CALLS_KEPT))
    with batcher.preparing(2):  # this request's one item and another request's
        queued = batcher.submit_many([item(1.0)])
    assert not queued.done()
    assert float((await queued)[0][0]) == 2.0
    gate = PriorityGate(max_wait_s=0.05)
    yielding = DynamicBatcher(
        "visual",
        model,
        policy(inline_call_max_s=0.2, inline_in_submit=True),
        yields_to=gate,
        inline_allowed=lambda: True,
    )
    yielding.start()
    await lone_calls(yielding, range(LONE_CALLS_KEPT))
    gate.hold()
    held = yielding.submit_many([item(2.0)])
    assert not held.done()
    assert float((await held)[0][0]) == 4.0  # after the gate's max wait
    gate.release()
    assert yielding.submit_many([item(3.0)]).done()
    await batcher.close(1)
    await yielding.close(1)
