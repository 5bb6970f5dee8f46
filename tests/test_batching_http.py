"""Batching across requests over real HTTP: same answers as one at a time, and batches > 1."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette

from photofield_ai.app import create_app
from photofield_ai.clip.wire import decode_embedding
from photofield_ai.config import Settings
from photofield_ai.runtime.cpus import usable_cpus
from photofield_ai.serving.loading import LoadedModels
from photofield_ai.testing.server import serve_in_thread
from tests.conftest import CPU, FlakySession, ServerProcess, clip_model, start_server
from tests.images import jpeg
from tests.probes import metric, parse_metric, request_in_flight


def _batch_histogram(text: str, model: str) -> tuple[float, float]:
    def value(name: str) -> float:
        m = re.search(rf'^{name}{{model="{model}"}} (\S+)$', text, re.M)
        assert m, name
        return float(m.group(1))

    return (value("photofield_ai_batch_size_sum"), value("photofield_ai_batch_size_count"))


async def _post_images(url: str, images: list[bytes], concurrency: int) -> list[np.ndarray]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(data: bytes) -> np.ndarray:
            r = await client.post(
                url + "/image-embeddings", files={"image": ("t.jpg", data, "image/jpeg")}
            )
            assert r.status_code == 200, r.text
            return decode_embedding(r.json()["images"][0]["embedding_f16_b64"])

        return list(await asyncio.gather(*(one(d) for d in images)))


async def _post_texts(url: str, texts: list[str]) -> list[np.ndarray]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(text: str) -> np.ndarray:
            r = await client.post(url + "/text-embeddings", json={"texts": [text]})
            assert r.status_code == 200, r.text
            return decode_embedding(r.json()["texts"][0]["embedding_f16_b64"])

        return list(await asyncio.gather(*(one(t) for t in texts)))


def test_concurrent_requests_equal_sequential_ones(server: ServerProcess) -> None:
    images = [jpeg(256, 192, seed=i) for i in range(48)]
    before = _batch_histogram(httpx.get(server.url + "/metrics").text, "visual")
    sequential = asyncio.run(_post_images(server.url, images, concurrency=1))
    after_sequential = _batch_histogram(httpx.get(server.url + "/metrics").text, "visual")
    # One at a time, every batch holds one item.
    assert after_sequential[0] - before[0] == after_sequential[1] - before[1] == 48
    concurrent = asyncio.run(_post_images(server.url, images, concurrency=48))
    after = _batch_histogram(httpx.get(server.url + "/metrics").text, "visual")
    assert after[0] - after_sequential[0] == 48
    for a, b in zip(sequential, concurrent, strict=True):
        assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= 1e-4


def test_concurrent_texts_equal_sequential_ones(server: ServerProcess) -> None:
    texts = [f"a photo of {n} dogs on a beach" for n in range(32)]
    sequential = [asyncio.run(_post_texts(server.url, [t]))[0] for t in texts]
    concurrent = asyncio.run(_post_texts(server.url, texts))
    for a, b in zip(sequential, concurrent, strict=True):
        assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= 1e-4


# -- batching and search-first in the real app, with sessions slowed to a known cost ------------
class RecordingSession(FlakySession):
    """The real session, slowed, recording when each call ran."""

    calls: list[tuple[str, float, float]]  # (model input, start, end); set by slowed_app

    def run(self, batch: np.ndarray, output_names: list[str] | None = None) -> list[np.ndarray]:
        started = time.monotonic()
        out = super().run(batch, output_names)
        self.calls.append((self.input_type, started, time.monotonic()))
        return out


def slowed_app(
    models: tuple[Path, Path], visual_s: float, textual_s: float, **settings: object
) -> tuple[Starlette, list[tuple[str, float, float]]]:
    visual = clip_model(models[0], "visual", session_type=RecordingSession)
    textual = clip_model(models[1], "textual", session_type=RecordingSession)
    assert isinstance(visual.session, RecordingSession)
    assert isinstance(textual.session, RecordingSession)
    visual.session.delay_s, textual.session.delay_s = visual_s, textual_s
    calls: list[tuple[str, float, float]] = []
    visual.session.calls = textual.session.calls = calls
    loaded = LoadedModels(CPU, visual, textual)
    return create_app(Settings(adaptive_layout=False, **settings), loaded), calls  # type: ignore[arg-type]


def test_a_lone_thumbnail_takes_the_every_core_session_only_in_an_idle_server(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    """The adaptive CPU layout: the visual model's every-core session spins during its calls,
    so a lone thumbnail takes it only while no other request is in the server (here one held
    half sent); a lone search keeps taking the text model's, which does not spin."""
    if usable_cpus() < 2:
        pytest.skip("the adaptive layout needs two usable CPUs")
    srv = start_server(tmp_path, *tiny_float32)
    thumb = jpeg(256, 192)
    try:
        with httpx.Client(timeout=30) as client:

            def alone(model: str) -> float:
                return metric(srv.url, "photofield_ai_batches_alone_total", model=model)

            def embed(path: str, **body: Any) -> None:
                assert client.post(srv.url + path, **body).status_code == 200

            def thumbnails(n: int) -> None:
                for _ in range(n):
                    embed("/image-embeddings", files={"image": ("a.jpg", thumb)})

            visual = alone("visual")
            thumbnails(3)
            assert alone("visual") == visual + 3
            with request_in_flight(srv.url):
                visual, textual = alone("visual"), alone("textual")
                thumbnails(3)
                embed("/text-embeddings", json={"texts": ["a lone search"]})
                assert alone("visual") == visual
                assert alone("textual") == textual + 1
            time.sleep(0.3)  # the server sees the held request's connection close
            thumbnails(2)
            assert alone("visual") == visual + 2
    finally:
        assert srv.stop() == 0


def test_concurrent_requests_form_real_batches(tiny_float32: tuple[Path, Path]) -> None:
    """48 image requests and 32 text requests at once against sessions that take 0.2 s a call:
    the images are batched (mean batch at least 2) and some text batch holds several texts."""
    app, _ = slowed_app(tiny_float32, 0.2, 0.2, max_batch_size=16)
    with serve_in_thread(app) as url:
        images = [jpeg(256, 192, seed=i) for i in range(48)]
        asyncio.run(_post_images(url, images, concurrency=48))
        asyncio.run(_post_texts(url, [f"dog {i}" for i in range(32)]))
        text = httpx.get(url + "/metrics").text
    items, batches = _batch_histogram(text, "visual")
    assert items == 48 and items / batches >= 2, f"mean visual batch {items / batches:.1f}"
    text_items, text_batches = _batch_histogram(text, "textual")
    singles = parse_metric(text, "photofield_ai_batch_size_bucket", model="textual", le="1.0")
    assert text_items == 32 and singles < text_batches, "no text batch held more than one text"


def test_search_goes_before_indexing_in_the_app(tiny_float32: tuple[Path, Path]) -> None:
    """A saturated image queue (0.3 s calls, two at a time, batches of 2) and one search: while
    the search is queued or running no image batch starts, so it is answered after at most the
    image batches already running."""
    app, calls = slowed_app(tiny_float32, 0.3, 0.3, max_batch_size=2, max_concurrent_batches=2)
    with serve_in_thread(app) as url:

        async def scenario() -> float:
            indexing = asyncio.ensure_future(
                _post_images(url, [jpeg(256, 192, seed=i) for i in range(16)], concurrency=16)
            )
            async with httpx.AsyncClient() as client:
                deadline = time.monotonic() + 30
                # Two image batches are running and more are queued.
                while (
                    parse_metric(
                        (await client.get(url + "/metrics")).text,
                        "photofield_ai_queue_depth",
                        model="visual",
                    )
                    < 4
                ):
                    assert time.monotonic() < deadline, "the image queue never filled"
                    await asyncio.sleep(0.01)
            started = time.monotonic()
            await _post_texts(url, ["hawk"])
            elapsed = time.monotonic() - started
            await indexing
            return elapsed

        elapsed = asyncio.run(scenario())
    text_call = [c for c in calls if c[0] == "tensor(int32)"][-1]  # after the warm-up call
    overlapping = [
        c for c in calls if c[0] != "tensor(int32)" and text_call[1] < c[1] < text_call[2]
    ]
    assert overlapping == [], "image batches started while the search was running"
    assert elapsed < 0.3 * 2 + 0.3 + 0.5, f"the search took {elapsed:.2f} s"


def test_a_lone_image_is_decoded_on_the_event_loop_and_others_on_decode_threads(
    tiny_float32: tuple[Path, Path],
) -> None:
    """One worker process: a request's one image on an idle model is decoded on the event loop
    (no thread hops for a lone thumbnail); a second image of the same request, or an image
    arriving while a batch runs, goes to the decode threads — the same embeddings either way."""
    app, _ = slowed_app(tiny_float32, 0.3, 0.0)

    def decoded(url: str, where: str) -> float:
        text = httpx.get(url + "/metrics").text
        return parse_metric(text, "photofield_ai_images_decoded_total", where=where)

    with serve_in_thread(app) as url:
        photo = jpeg(256, 192, seed=3)
        lone = asyncio.run(_post_images(url, [photo, photo], concurrency=1))
        assert (decoded(url, "event_loop"), decoded(url, "thread")) == (2, 0)

        r = httpx.post(
            url + "/image-embeddings",
            files=[("image", ("a.jpg", photo)), ("image", ("b.jpg", photo))],
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert (decoded(url, "event_loop"), decoded(url, "thread")) == (2, 2)

        async def behind_a_running_batch() -> list[np.ndarray]:
            first = asyncio.ensure_future(_post_images(url, [photo], concurrency=1))
            async with httpx.AsyncClient() as client:
                while True:  # until its batch runs (a 0.3 s call)
                    text = (await client.get(url + "/metrics")).text
                    if parse_metric(text, "photofield_ai_batches_in_flight", model="visual"):
                        break
                    await asyncio.sleep(0.01)
            second = await _post_images(url, [photo], concurrency=1)
            return [*(await first), *second]

        during = asyncio.run(behind_a_running_batch())
        assert (decoded(url, "event_loop"), decoded(url, "thread")) == (3, 3)
    pair = [decode_embedding(i["embedding_f16_b64"]) for i in r.json()["images"]]
    for vector in [*during, *pair, lone[1]]:
        np.testing.assert_array_equal(vector, lone[0])
