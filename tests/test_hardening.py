"""Bad input, overload, faults and shutdown, each tried against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette

from photofield_ai.app import create_app
from photofield_ai.clip.wire import decode_embedding
from photofield_ai.config import Settings
from photofield_ai.serving.loading import LoadedModels
from photofield_ai.testing.server import free_port, serve_in_thread
from tests.conftest import (
    CPU,
    FlakySession,
    ServerProcess,
    clip_model,
    start_server,
    wait_until,
)
from tests.corpus import LIMITS, Case, cases
from tests.images import jpeg
from tests.probes import image_post_then_leave, metric, parse_metric, rss_bytes

CASES = cases()


@pytest.fixture(scope="module")
def limits_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_float32: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("limits"), *tiny_float32, **LIMITS)
    yield srv
    srv.stop()


def send(url: str, case: Case) -> httpx.Response:
    content: bytes | Iterator[bytes] | None = case.content
    if case.chunked and case.content is not None:
        body = case.content
        content = (body[i : i + 65536] for i in range(0, len(body), 65536))
    return httpx.request(
        case.method,
        url + case.path,
        files=case.files,
        data=case.data,
        content=content,
        headers=case.headers,
        timeout=60,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_corpus(limits_server: ServerProcess, case: Case, heavy_industry: bytes) -> None:
    r = send(limits_server.url, case)
    assert r.status_code == case.status, r.text
    if case.status != 200:
        body = r.json()
        assert list(body) == ["error"] and case.needle in body["error"], body
    elif case.path.endswith("image-embeddings"):
        assert len(r.json()["images"]) == len(case.files or [1])
    # ... and the server still answers a good request.
    ok = httpx.post(
        limits_server.url + "/image-embeddings",
        files={"image": ("ok.jpg", heavy_industry, "image/jpeg")},
        timeout=60,
    )
    assert ok.status_code == 200


def test_bad_images_never_fail_other_clients_in_the_same_batch(
    limits_server: ServerProcess, heavy_industry: bytes
) -> None:
    bad = [c for c in CASES if c.path == "/image-embeddings" and c.status >= 400 and c.files]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            good = [
                client.post(
                    limits_server.url + "/image-embeddings",
                    files={"image": ("ok.jpg", heavy_industry, "image/jpeg")},
                )
                for _ in range(16)
            ]
            broken = [
                client.post(limits_server.url + "/image-embeddings", files=c.files) for c in bad
            ]
            return list(await asyncio.gather(*good, *broken))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses[:16]] == [200] * 16
    assert all(400 <= r.status_code < 500 for r in responses[16:])


# -- in-process servers, for faults a real model will not produce on demand ---------------------
def flaky_models(models: tuple[Path, Path]) -> tuple[LoadedModels, FlakySession]:
    """The tiny CLIP models, the visual one on a FlakySession."""
    visual = clip_model(models[0], "visual", session_type=FlakySession)
    assert isinstance(visual.session, FlakySession)
    return LoadedModels(CPU, visual, clip_model(models[1], "textual")), visual.session


def test_failing_session_call_fails_only_its_batch(
    tiny_float32: tuple[Path, Path], heavy_industry: bytes
) -> None:
    models, visual = flaky_models(tiny_float32)
    app = create_app(Settings(), models)
    with serve_in_thread(app) as url:
        visual.fail_next = True
        r = httpx.post(url + "/image-embeddings", files={"image": ("a.jpg", heavy_industry)})
        assert r.status_code == 500
        assert r.json() == {"error": "visual inference failed for this batch: injected failure"}
        assert metric(url, "photofield_ai_batches_failed_total", model="visual") == 1
        assert metric(url, "photofield_ai_items_failed_total", model="visual") == 1
        again = httpx.post(url + "/image-embeddings", files={"image": ("a.jpg", heavy_industry)})
        assert again.status_code == 200
        assert httpx.post(url + "/text-embeddings", json={"texts": ["x"]}).status_code == 200


@contextlib.contextmanager
def serve_with_plain_uvicorn(app: Starlette) -> Iterator[str]:
    """The app under uvicorn's own protocol, without ours (no ON_DISCONNECT extension): what
    someone mounting the app in another ASGI server gets."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="plain-uvicorn")
    thread.start()
    try:
        wait_until(lambda: server.started, "plain uvicorn starts", 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize(
    "serve", [serve_in_thread, serve_with_plain_uvicorn], ids=["our server", "plain uvicorn"]
)
def test_client_that_leaves_while_queued_is_dropped(
    tiny_float32: tuple[Path, Path],
    heavy_industry: bytes,
    serve: Callable[[Starlette], contextlib.AbstractContextManager[str]],
) -> None:
    models, visual = flaky_models(tiny_float32)
    visual.delay_s = 0.6
    # One batch in flight, so that the second request has to queue behind the first.
    settings = Settings(max_concurrent_batches=1)
    app = create_app(settings, models)
    with serve(app) as url:
        busy: list[int] = []
        first = threading.Thread(
            target=lambda: busy.append(
                httpx.post(
                    url + "/image-embeddings",
                    files={"image": ("a.jpg", heavy_industry)},
                    timeout=30,
                ).status_code
            )
        )
        first.start()
        wait_until(
            lambda: metric(url, "photofield_ai_batches_in_flight", model="visual") == 1,
            "the first request's batch runs",
        )
        with image_post_then_leave(url, heavy_industry):
            deadline = time.monotonic() + 5
            while metric(url, "photofield_ai_queue_depth", model="visual") < 1:
                assert time.monotonic() < deadline, "the second request never got queued"
                time.sleep(0.02)
        # The socket is closed: its queued item must go, and the gauge must say so at once.
        deadline = time.monotonic() + 5
        while (
            metric(
                url,
                "photofield_ai_items_dropped_total",
                model="visual",
                reason="client_disconnected",
            )
            < 1
        ):
            assert time.monotonic() < deadline, "the item of the departed client was not dropped"
            time.sleep(0.02)
        assert metric(url, "photofield_ai_queue_depth", model="visual") == 0
        first.join()
        assert busy == [200]
        ok = httpx.post(url + "/image-embeddings", files={"image": ("c.jpg", heavy_industry)})
        assert ok.status_code == 200
        # Only the two requests that stayed were run.
        assert metric(url, "photofield_ai_items_processed_total", model="visual") == 2


def test_disabled_models_answer_503(
    tmp_path: Path, tiny_float32: tuple[Path, Path], heavy_industry: bytes
) -> None:
    srv = start_server(tmp_path, None, tiny_float32[1], PHOTOFIELD_AI_VISUAL_MODEL="none")
    try:
        r = httpx.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", heavy_industry)})
        assert r.status_code == 503 and r.json() == {
            "error": "no visual model is loaded on this server"
        }
        assert httpx.head(srv.url + "/image-embeddings").status_code == 503
        assert httpx.post(srv.url + "/text-embeddings", json={"texts": ["a"]}).status_code == 200
        assert httpx.head(srv.url + "/text-embeddings").status_code == 200
    finally:
        assert srv.stop() == 0
    app = create_app(Settings(), None)
    with serve_in_thread(app) as url:
        r = httpx.post(url + "/text-embeddings", json={"texts": ["a"]})
        assert r.status_code == 503 and "no textual model" in r.json()["error"]


# -- overload -----------------------------------------------------------------------------------
async def flood(url: str, images: list[bytes], total: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=total, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        url + "/image-embeddings",
                        files={"image": (f"{i}.jpg", images[i % len(images)], "image/jpeg")},
                    )
                    for i in range(total)
                )
            )
        )


def test_flood_gets_embeddings_or_503_with_bounded_memory(tiny_float32: tuple[Path, Path]) -> None:
    """Far more concurrent requests than the queue holds, against a model slowed to 50 ms per
    batch: every request gets its embedding or an immediate 503, and memory stays bounded.
    (In-process so the model can be slowed; RSS is this process's, server and client both.)"""
    models, visual = flaky_models(tiny_float32)
    visual.delay_s = 0.05
    settings = Settings(max_queue=8, max_batch_size=4)
    app = create_app(settings, models)
    images = [jpeg(640, 480, seed=i) for i in range(4)]
    with serve_in_thread(app) as url:
        expected = [
            decode_embedding(
                httpx.post(url + "/image-embeddings", files={"image": ("x.jpg", d)}).json()[
                    "images"
                ][0]["embedding_f16_b64"]
            )
            for d in images
        ]
        asyncio.run(flood(url, images, 100))  # warm every code path once
        baseline = rss_bytes(os.getpid())
        peak = baseline
        responses: list[httpx.Response] = []
        for _ in range(2):
            responses += asyncio.run(flood(url, images, 250))
            peak = max(peak, rss_bytes(os.getpid()))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(503) > 0, "the flood should overflow a queue of 8"
    assert statuses.count(200) >= 8
    for i, r in enumerate(responses):
        if r.status_code == 200:
            got = decode_embedding(r.json()["images"][0]["embedding_f16_b64"])
            want = expected[(i % 250) % len(images)]
            assert np.abs(got.astype(np.float32) - want.astype(np.float32)).max() <= 1e-4
        else:
            assert r.headers["Retry-After"] == "1"
            assert "queue is full" in r.json()["error"]
    growth = peak - baseline
    print(
        f"RSS baseline {baseline / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB; "
        f"{statuses.count(503)} of {len(statuses)} answered 503"
    )
    assert growth < 200e6, f"RSS grew by {growth / 1e6:.0f} MB under a flood"


def test_queue_timeout_answers_503_without_running(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    srv = start_server(
        tmp_path,
        *tiny_float32,
        PHOTOFIELD_AI_QUEUE_TIMEOUT_MS="1",
        PHOTOFIELD_AI_MAX_BATCH_SIZE="1",
    )
    try:
        responses = asyncio.run(flood(srv.url, [jpeg(256, 192)], 40))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}
        timed_out = [r for r in responses if r.status_code == 503]
        assert timed_out, "with a 1 ms queue timeout and batch size 1, some items must time out"
        assert all("queue timeout" in r.json()["error"] for r in timed_out)
        assert all(r.headers["Retry-After"] == "1" for r in timed_out)
        dropped = metric(
            srv.url, "photofield_ai_items_dropped_total", model="visual", reason="queue_timeout"
        )
        assert dropped == len(timed_out)
        assert metric(
            srv.url, "photofield_ai_items_processed_total", model="visual"
        ) == statuses.count(200)
    finally:
        srv.stop()


# -- shutdown -----------------------------------------------------------------------------------
def test_sigterm_finishes_accepted_requests_then_exits_0(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    srv = start_server(
        tmp_path,
        *tiny_float32,
        PHOTOFIELD_AI_SHUTDOWN_GRACE_S="60",
        PHOTOFIELD_AI_SHUTDOWN_DELAY_S="1",
    )
    photos = [jpeg(4000, 3000, seed=i) for i in range(2)]

    async def scenario() -> tuple[list[httpx.Response], int, httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            accepted = [
                asyncio.ensure_future(
                    client.post(
                        srv.url + "/image-embeddings",
                        files={"image": (f"{i}.jpg", photos[i % 2], "image/jpeg")},
                    )
                )
                for i in range(16)
            ]
            deadline = time.monotonic() + 30
            # All 16 are in the server (the 17th in flight is this /metrics request itself).
            while (
                parse_metric(
                    (await client.get(srv.url + "/metrics")).text,
                    "photofield_ai_http_requests_in_flight",
                )
                < 17
            ):
                assert time.monotonic() < deadline, "the uploads never all arrived"
                await asyncio.sleep(0.02)
            srv.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while (ready := (await client.get(srv.url + "/ready")).status_code) == 200:
                assert time.monotonic() < deadline, "readiness never turned false"
                await asyncio.sleep(0.02)
            late = await client.post(srv.url + "/text-embeddings", json={"texts": ["late"]})
            return list(await asyncio.gather(*accepted)), ready, late

    responses, ready, late = asyncio.run(scenario())
    assert ready == 503, "readiness turns false first"
    # Requests that still arrive are served (Photofield treats a non-200 from /faces as
    # "faces off for an hour"), and told to reconnect elsewhere.
    assert late.status_code == 200, late.text
    assert late.headers["connection"] == "close"
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses]
    assert srv.process.wait(60) == 0
    assert "draining" in srv.log()


def test_ready_is_503_while_loading_and_a_closed_engine_says_retry(
    tiny_float32: tuple[Path, Path],
) -> None:
    """Before the engine has started, /ready says the models are loading; once its queues
    have closed (the end of a drain), a request is refused with 503 and Retry-After."""
    models, _ = flaky_models(tiny_float32)
    app = create_app(Settings(), models)
    engine = app.state.engine

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            loading = await client.get("/ready")
            await engine.start()
            await engine.close()
            closed = await client.post("/text-embeddings", json={"texts": ["late"]})
            ready = await client.get("/ready")
            return loading, closed, ready

    loading, closed, ready = asyncio.run(scenario())
    assert loading.status_code == 503 and loading.json()["error"] == "models are loading"
    assert closed.status_code == 503 and closed.headers["Retry-After"] == "1"
    assert "shutting down" in closed.json()["error"]
    assert ready.status_code == 503 and ready.json()["error"] == "shutting down"


# One model (its warm-up call is as slow as any other): a call that runs 5 s.
SLOW_CALL = {
    "PHOTOFIELD_AI_VISUAL_MODEL": "none",
    "PHOTOFIELD_AI_TEXTUAL_MODEL": "simulated://textual?alpha_ms=5000",
    "PHOTOFIELD_AI_WORKERS": "1",
    "PHOTOFIELD_AI_SHUTDOWN_DELAY_S": "0",
}


def _request_in_flight(srv: ServerProcess) -> threading.Thread:
    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(srv.url + "/text-embeddings", json={"texts": ["slow"]}, timeout=30)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while (
        parse_metric(httpx.get(srv.url + "/metrics").text, "photofield_ai_http_requests_in_flight")
        < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return thread


def test_a_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    srv = start_server(tmp_path, None, None, **SLOW_CALL, PHOTOFIELD_AI_SHUTDOWN_GRACE_S="60")
    _request_in_flight(srv)
    srv.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    srv.process.wait(30)
    assert time.monotonic() - started < 3, "the second SIGTERM should not wait for the request"
    assert "again: stopping now" in srv.log()


def test_an_expired_grace_period_ends_the_drain(tmp_path: Path) -> None:
    srv = start_server(tmp_path, None, None, **SLOW_CALL, PHOTOFIELD_AI_SHUTDOWN_GRACE_S="1")
    _request_in_flight(srv)
    started = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    srv.process.wait(30)
    assert time.monotonic() - started < 3.5, "the drain outlived its grace period"
