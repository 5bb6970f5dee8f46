"""The benchmark's own load generator and server counters, against a real server: numbers in
BENCHMARKS.md are only as good as the client that produced them."""

import asyncio
import collections
import itertools
import json
import subprocess
import sys
import urllib.request

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.ceiling import best_in_flight
from benchmarks.counters import ServerCounters, histogram_mean, measure, scrape
from benchmarks.http_tables import by_turns
from benchmarks.in_flight import bare_layouts, best_bare
from benchmarks.load import Workload, encode_requests, run_interleaved, run_load
from photofield_ai.clip.wire import decode_embedding
from tests.conftest import ServerProcess
from tests.images import jpeg


def test_encoded_requests_are_what_the_server_answers(server: ServerProcess) -> None:
    """The hand-encoded multipart and JSON requests mean the same to the server as requests
    built by an HTTP library: same embeddings back."""
    image = jpeg(256, 192, quality=85, seed=3)
    (raw_image,) = encode_requests("127.0.0.1", Workload("image", payloads=(image,)))
    (raw_text,) = encode_requests("127.0.0.1", Workload("text", texts=("beach sunset",)))

    async def send(raw: bytes) -> bytes:
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200"), head
        return body

    by_hand = json.loads(asyncio.run(send(raw_image)))
    by_library = httpx.post(
        server.url + "/image-embeddings", files={"image": ("x.jpg", image, "image/jpeg")}
    ).json()
    np.testing.assert_array_equal(
        decode_embedding(by_hand["images"][0]["embedding_f16_b64"]),
        decode_embedding(by_library["images"][0]["embedding_f16_b64"]),
    )
    text = json.loads(asyncio.run(send(raw_text)))
    assert text["texts"][0]["text"] == "beach sunset"


def test_load_generator_counts_successes_and_errors(server: ServerProcess) -> None:
    good = Workload("image", payloads=(jpeg(256, 192, quality=85, seed=1),))
    result = run_load(server.url, good, concurrency=4, warmup_s=0.2, measure_s=1.5)
    assert result.errors == {}
    assert len(result.latencies) > 4 and min(result.latencies) > 0

    bad = Workload("image", payloads=(b"not an image at all",))
    result = run_load(server.url, bad, concurrency=2, warmup_s=0.0, measure_s=1.0)
    assert not result.latencies
    assert set(result.errors) == {422} and result.errors[422] > 2  # keep-alive survives a 422


def test_interleaved_requests_alternate_with_the_calls_they_are_paired_with(
    server: ServerProcess,
) -> None:
    """benchmarks.http_tables pairs each lone HTTP request with bare calls: the paired call
    runs once after every request, and a refused request is an error, not a latency."""
    events: list[str] = []

    def between() -> None:
        events.append("call")

    good = Workload("image", payloads=(jpeg(256, 192, quality=85, seed=1),))
    result = run_interleaved(server.url, good, between, seconds=1.0, warmup=2)
    assert result.errors == {}
    assert len(result.latencies) == events.count("call") >= 3
    assert result.seconds == pytest.approx(sum(result.latencies))

    bad = Workload("image", payloads=(b"not an image at all",))
    events.clear()
    result = run_interleaved(server.url, bad, between, seconds=0.5, warmup=0)
    assert not result.latencies and result.errors[422] == len(events) >= 2


def test_bare_layouts_take_turns_so_none_always_follows_the_same_call() -> None:
    """What a bare call follows might change what it costs (`benchmarks.lone --bare-order`):
    over each full cycle every layout comes first — right after the HTTP request — as often as
    the others, and follows each other layout as often."""
    names = ("1 thread", "default", "spinning")
    orders = by_turns(names)
    cycle = [next(orders) for _ in range(6)]
    assert sorted(cycle) == sorted(itertools.permutations(names))
    follows = collections.Counter(
        (before, after) for order in cycle for before, after in itertools.pairwise(("HTTP", *order))
    )
    assert set(follows.values()) == {2} and len(follows) == 3 + 3 * 2
    assert next(orders) == cycle[0]


def test_server_counters_follow_the_work(server: ServerProcess) -> None:
    # Distinct texts: a repeated one would be a text-cache hit and never reach the model.
    texts = Workload("text", texts=tuple(f"a photo of thing {i}" for i in range(5000)))
    result, activity = measure(server, "textual", lambda: run_load(server.url, texts, 8, 0.0, 1.0))
    assert result.latencies and activity.mean_batch >= 1
    assert 0 < activity.busy <= 1.5 and activity.mean_call_s > 0
    assert activity.cpu_s is None or activity.cpu_s > 0
    before = ServerCounters.read(server, "textual")
    with urllib.request.urlopen(server.url + "/health"):
        pass
    assert ServerCounters.read(server, "textual").items == before.items


def test_a_measured_run_answered_by_the_text_cache_is_refused(server: ServerProcess) -> None:
    """The model-path tables must not quietly measure the cache (the fixture server has it on,
    like the defaults): one repeated text is answered from it after its first miss."""
    repeated = Workload("text", texts=("the same query again",))
    with pytest.raises(RuntimeError, match="answered from the text cache"):
        measure(server, "textual", lambda: run_load(server.url, repeated, 2, 0.0, 0.5))


def test_gpu_benchmark_refuses_a_machine_without_cuda() -> None:
    """Rather than measuring the CPU under a GPU heading."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--gpu", "--out", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--gpu needs ONNX Runtime's CUDA provider" in result.stderr


def test_the_in_flight_ceiling_counts_every_call_at_once() -> None:
    """C clients give the model at most C items: two calls of b=4 need 8 in flight."""
    rates = [10.0, 12.0, 14.0, 17.0, 16.0, 15.0]  # b = 1, 2, 4, 8, 16, 32
    sizes = [1, 2, 4, 8, 16, 32]
    assert best_in_flight(sizes, rates, 1) == [(4, 14.0), (16, 17.0), (32, 17.0)]
    assert best_in_flight(sizes, rates, 2) == [(4, 12.0), (16, 17.0), (32, 17.0)]
    assert best_in_flight([64], [20.0], 2) == []


def test_the_in_flight_benchmark_compares_only_layouts_that_fit_c() -> None:
    """benchmarks.in_flight: no bare layout holds more than C items (calls × batch)."""
    assert bare_layouts(4, 2, None) == [
        ("1 call of 4, default threads", 0, 1, 4),
        ("2 single-threaded calls of 2", 1, 2, 2),
    ]
    layouts = bare_layouts(32, 2, [4, 8, 16, 32])
    assert all(calls * batch <= 32 for _, _, calls, batch in layouts)
    assert [(calls, batch) for _, _, calls, batch in layouts] == [
        (1, 4),
        (1, 8),
        (1, 16),
        (1, 32),
        (2, 4),
        (2, 8),
        (2, 16),
    ]
    assert bare_layouts(4, 1, None) == [("1 call of 4, default threads", 0, 1, 4)]


def test_the_in_flight_ratio_divides_by_the_best_layout_not_the_best_of_each_round() -> None:
    """Two equally fast layouts measured with noise: the larger of each round overstates both,
    so the headline divides by the layout with the highest mean."""
    bare = {"one call of 4": [14.0, 12.0, 15.0, 13.0], "two calls of 2": [12.0, 14.0, 13.0, 15.0]}
    layout, of_round = best_bare(bare)
    assert layout == "one call of 4" and np.mean(bare[layout]) == 13.5
    assert of_round == [14.0, 14.0, 15.0, 15.0] and np.mean(of_round) == 14.5


def test_lone_stage_means_are_taken_between_two_scrapes(server: ServerProcess) -> None:
    """benchmarks.lone splits a round trip by the server's histograms: the mean of what was
    observed between two scrapes, per label set — here two texts after one earlier image."""
    image = jpeg(256, 192, seed=1)
    sent = httpx.post(server.url + "/image-embeddings", files={"image": ("a.jpg", image)})
    assert sent.is_success
    before = scrape(server.url)
    for text in ("hawk", "a photo of a dog"):
        assert httpx.post(server.url + "/text-embeddings", json={"texts": [text]}).is_success
    after = scrape(server.url)
    key = (("kind", "text"),)
    spent = after[("photofield_ai_preprocess_seconds_sum", key)] - before.get(
        ("photofield_ai_preprocess_seconds_sum", key), 0.0
    )
    assert histogram_mean(before, after, "photofield_ai_preprocess_seconds", kind="text") == (
        pytest.approx(spent / 2)
    )
    assert np.isnan(histogram_mean(before, after, "photofield_ai_preprocess_seconds", kind="image"))


def test_the_one_process_bound_is_the_serial_part_of_each_layout() -> None:
    """Section 5's bound: 1000 ÷ the event loop's ms per request with one process, 1000 ÷ the
    inference process's with several — never the cores' projection, which ignores it."""
    from benchmarks.accelerator import Row, one_process_bound
    from benchmarks.counters import Activity
    from benchmarks.load import LoadResult

    # 2,000 items: 2 s of CPU in all, 0.5 s of it on the event loop(s), 0.8 s inference.
    activity = Activity(0.0, 2000, 200, 2.0, 5.0, loop_cpu_s=0.5)
    one = Row("256-px JPEG", 1, 64, LoadResult(64, 5.0), activity, 0.0)
    several = Row("256-px JPEG", 2, 64, LoadResult(64, 5.0), activity, 0.8)
    assert one_process_bound(one) == "4000 req/s (event loop)"
    assert one_process_bound(several) == "2500 req/s (inference process)"
