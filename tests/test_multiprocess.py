"""The multi-process server on real processes (simulated accelerator, so a batch has a known
cost): batches form across workers, one scrape counts every worker, a dead worker is replaced,
a dead inference process gives 503 and comes back, and SIGTERM loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, start_server, wait_until
from tests.images import jpeg
from tests.probes import image_post_then_leave, parse_metric
from tests.probes import metric as probe_metric
from tests.test_simulated import FAST, assert_lone_calls_skip_the_thread_hops_only_when_alone

# 40 ms per batch: requests arriving meanwhile wait and are batched together.
SLOW = {
    "PHOTOFIELD_AI_VISUAL_MODEL": "simulated://visual?alpha_ms=40&beta_ms=0.1",
    "PHOTOFIELD_AI_TEXTUAL_MODEL": "simulated://textual?alpha_ms=40&beta_ms=0.1",
    "PHOTOFIELD_AI_WORKERS": "2",
    "PHOTOFIELD_AI_SHUTDOWN_DELAY_S": "0.5",
}
THUMBNAIL = jpeg(256, 192)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("multi"), None, None, **SLOW)
    yield srv
    srv.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_workers(srv: ServerProcess, n: int) -> None:
    """Until the inference process has welcomed `n` workers (and their loops then serve)."""
    deadline = time.monotonic() + 30
    while srv.log().count("connected") - srv.log().count("disconnected") < n:
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.05)
    time.sleep(0.3)


async def many(url: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks = [
            client.post(url + "/image-embeddings", files={"image": ("t.jpg", THUMBNAIL)})
            for _ in range(n)
        ]
        return [r.status_code for r in await asyncio.gather(*tasks)]


def test_batches_form_across_workers_and_one_scrape_counts_them_all(multi: ServerProcess) -> None:
    wait_for_workers(multi, 2)
    workers = multi.workers()
    assert sorted(workers) == ["worker-0", "worker-1"]
    assert multi.inference_pid() is not None
    cpu = {name: cpu_seconds(pid) for name, pid in workers.items()}
    before_items = parse_metric(
        httpx.get(multi.url + "/metrics").text,
        "photofield_ai_items_processed_total",
        model="visual",
    )
    codes = asyncio.run(many(multi.url, 48))
    assert codes == [200] * 48
    # The kernel spread the connections over both workers (each decoded some) ...
    used = {name: cpu_seconds(pid) - cpu[name] for name, pid in workers.items()}
    assert all(seconds >= 0.02 for seconds in used.values()), used
    # ... and the inference process batched them together.
    text = httpx.get(multi.url + "/metrics").text
    batches = parse_metric(text, "photofield_ai_batch_size_count", model="visual")
    items = parse_metric(text, "photofield_ai_batch_size_sum", model="visual")
    assert items / batches > 4, f"mean batch {items / batches:.1f}"
    # Every scrape, whichever worker answers it, counts both workers' requests.
    totals = {
        parse_metric(
            httpx.get(multi.url + "/metrics", headers={"Connection": "close"}).text,
            "photofield_ai_items_processed_total",
            model="visual",
        )
        for _ in range(6)
    }
    assert totals == {before_items + 48}


def test_text_and_queue_full_across_processes(tmp_path: Path) -> None:
    srv = start_server(tmp_path, None, None, **SLOW, PHOTOFIELD_AI_MAX_QUEUE="4")
    try:
        r = httpx.post(srv.url + "/text-embeddings", json={"texts": ["hawk", "cat"]})
        assert r.status_code == 200 and len(r.json()["texts"]) == 2
        codes = asyncio.run(many(srv.url, 40))
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    finally:
        assert srv.stop() == 0


def test_a_client_that_leaves_while_queued_is_dropped_across_processes(tmp_path: Path) -> None:
    """The worker sends CANCEL for a request whose client left; the inference process drops
    its queued item (counted in the one scrape), answers CANCELLED, and the worker's slot is
    free again."""
    slow = {**SLOW, "PHOTOFIELD_AI_VISUAL_MODEL": "simulated://visual?alpha_ms=800&beta_ms=0.1"}
    srv = start_server(tmp_path, None, None, **slow, PHOTOFIELD_AI_MAX_CONCURRENT_BATCHES="1")
    try:
        wait_for_workers(srv, 2)

        def metric(name: str, **labels: str) -> float:
            return probe_metric(srv.url, name, **labels)

        first = threading.Thread(
            target=lambda: httpx.post(
                srv.url + "/image-embeddings", files={"image": ("a.jpg", THUMBNAIL)}, timeout=30
            )
        )
        first.start()
        wait_until(
            lambda: metric("photofield_ai_batches_in_flight", model="visual") == 1,
            "the first request's batch runs",
        )
        with image_post_then_leave(srv.url, THUMBNAIL):
            wait_until(
                lambda: metric("photofield_ai_queue_depth", model="visual") == 1,
                "the second request got queued",
            )
        wait_until(
            lambda: (
                metric(
                    "photofield_ai_items_dropped_total",
                    model="visual",
                    reason="client_disconnected",
                )
                == 1
            ),
            "the queued item of the client that left was dropped",
        )
        assert metric("photofield_ai_queue_depth", model="visual") == 0
        first.join(30)
        # Its slot came back: the workers still serve (their slabs are not leaking).
        assert asyncio.run(many(srv.url, 8)) == [200] * 8
        assert metric("photofield_ai_items_processed_total", model="visual") == 9
    finally:
        assert srv.stop() == 0


def test_a_killed_worker_is_replaced(multi: ServerProcess) -> None:
    old = multi.workers()
    os.kill(old["worker-0"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while multi.workers().get("worker-0") in (None, old["worker-0"]):
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    while httpx.get(multi.url + "/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert asyncio.run(many(multi.url, 16)) == [200] * 16
    assert "worker 0 exited with -9; starting a new one" in multi.log()


def test_a_killed_inference_process_gives_503_then_recovers(multi: ServerProcess) -> None:
    pid = multi.inference_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    codes = set()
    while True:
        r = httpx.post(
            multi.url + "/image-embeddings", files={"image": ("t.jpg", THUMBNAIL)}, timeout=10
        )
        codes.add(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert time.monotonic() - started < 60, "the inference process did not come back"
        time.sleep(0.05)
    assert 503 in codes, "requests while it was down should fail fast with 503"
    assert multi.inference_pid() not in (None, pid)


def test_sigterm_drains_every_worker_without_losing_a_request(tmp_path: Path) -> None:
    srv = start_server(tmp_path, None, None, **SLOW, PHOTOFIELD_AI_SHUTDOWN_GRACE_S="20")

    async def scenario() -> list[int]:
        task = asyncio.ensure_future(many(srv.url, 32))
        await asyncio.sleep(0.3)  # requests are in flight in both workers
        srv.process.send_signal(signal.SIGTERM)
        return await task

    codes = asyncio.run(scenario())
    assert codes == [200] * 32
    assert srv.process.wait(60) == 0
    assert srv.workers() == {} and srv.inference_pid() is None
    # Every shared-memory segment unlinked, and once: the processes share one resource tracker,
    # which printed a KeyError traceback per segment when an attach had dropped its record.
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"pfai-{srv.process.pid}-")]
    assert "Traceback" not in srv.log(), srv.log()


def test_a_lone_request_alone_in_every_worker_skips_the_inference_threads(tmp_path: Path) -> None:
    """W=2: the inference process calls a lone batch on its event loop only while no worker has
    another request in flight (the workers' counts in shared memory)."""
    srv = start_server(tmp_path, None, None, **{**SLOW, **FAST, "PHOTOFIELD_AI_WORKERS": "2"})
    try:
        wait_for_workers(srv, 2)
        assert_lone_calls_skip_the_thread_hops_only_when_alone(srv)
    finally:
        assert srv.stop() == 0
