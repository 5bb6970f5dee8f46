"""The simulated accelerator: a known cost per batch and no CPU, reachable only on purpose."""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from photofield_ai.batcher.batcher import LONE_CALLS_KEPT
from photofield_ai.clip.wire import decode_embedding
from photofield_ai.families.clip import ClipImageEncoder
from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.runtime import simulated
from photofield_ai.runtime.simulated import (
    SimulatedLocationError,
    SimulatedSession,
    parse,
)
from photofield_ai.serving.loading import load_embedding_model
from tests.conftest import CPU, ServerProcess, assert_one_line_error, run_cli, start_server
from tests.images import jpeg
from tests.probes import metric, request_in_flight

# A fast accelerator (0.1 ms calls) whose lone calls may run on the event loop while each of the
# last 8 took at most 100 ms, not the default 2: on a busy 2-core box (W=2's three processes and
# the client) a thread is sometimes not scheduled for 2 ms, which rightly sends the next 8 calls
# to the thread and made these tests fail now and then. What is tested here is when a call may
# run on the loop; how the guard reacts to a slow call is tested in test_batcher, without timing.
FAST = {
    "PHOTOFIELD_AI_VISUAL_MODEL": "simulated://visual?alpha_ms=0.1&beta_ms=0.01",
    "PHOTOFIELD_AI_TEXTUAL_MODEL": "simulated://textual?alpha_ms=0.1&beta_ms=0.01",
    "PHOTOFIELD_AI_INLINE_CALL_MAX_MS": "100",
}


def test_locations_parse_with_defaults_and_reject_mistakes() -> None:
    visual = parse("simulated://visual")
    assert (visual.alpha_s, visual.beta_s, visual.output_dim) == pytest.approx((0.001, 3e-5, 512))
    assert parse(visual.location) == visual
    text = parse("simulated://textual?alpha_ms=2&beta_ms=0.5&dim=768&dtype=float32")
    assert (text.alpha_s, text.beta_s, text.output_dim) == pytest.approx((0.002, 5e-4, 768))
    assert text.output_dtype == "float32"
    for bad in ("simulated://audio", "simulated://visual?alpha=1", "simulated://visual?dim=x"):
        with pytest.raises(SimulatedLocationError):
            parse(bad)


def test_a_batch_takes_alpha_plus_beta_b_and_no_cpu() -> None:
    session = SimulatedSession(parse("simulated://visual?alpha_ms=20&beta_ms=1"), CPU)
    batch = np.random.default_rng(0).integers(0, 255, (32, 224, 224, 3), dtype=np.uint8)
    wall, cpu = time.perf_counter(), time.thread_time()
    (out,) = session.run(batch)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert out.shape == (32, 512) and out.dtype == np.float16
    assert wall >= 0.020 + 32 * 0.001
    assert cpu < 0.25 * wall, f"{cpu * 1000:.1f} ms of CPU in a {wall * 1000:.1f} ms call"
    # Rows follow their items: the same image gives the same row, another image another one.
    (again,) = session.run(batch[[3, 0]])
    np.testing.assert_array_equal(again, out[[3, 0]])
    assert not np.array_equal(out[0], out[1])


def test_clip_family_takes_uint8_pixels_from_a_model_that_normalizes_itself() -> None:
    model = load_embedding_model(parse("simulated://visual"), CPU, "visual")
    assert isinstance(model.encoder, ClipImageEncoder) and model.encoder.takes_pixels
    row = model.encoder.preprocess(jpeg(300, 200), DecodeLimits())
    assert row.shape == (224, 224, 3) and row.dtype == np.uint8
    assert model.session.providers == ["SimulatedAccelerator"]


def test_server_on_simulated_models_says_so(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path,
        None,
        None,
        PHOTOFIELD_AI_VISUAL_MODEL="simulated://visual",
        PHOTOFIELD_AI_TEXTUAL_MODEL="simulated://textual",
    )
    try:
        r = httpx.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", jpeg(256, 192))})
        assert r.status_code == 200
        vector = decode_embedding(r.json()["images"][0]["embedding_f16_b64"])
        assert vector.shape == (512,)
        t = httpx.post(srv.url + "/text-embeddings", json={"texts": ["hawk"]})
        assert t.status_code == 200
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'providers="SimulatedAccelerator"' in metrics
        assert "SIMULATED accelerator" in srv.log()
        # The accelerator layout: big batches, two in flight.
        assert "visual: max batch size 64" in srv.log() and "2 batch(es) in flight" in srv.log()
    finally:
        assert srv.stop() == 0


def test_a_bad_simulated_location_is_a_one_line_start_up_error() -> None:
    result = run_cli(
        env={
            "PHOTOFIELD_AI_VISUAL_MODEL": "simulated://visual?alpha_ms=fast",
            "PHOTOFIELD_AI_RUNTIME": "cpu",
            "PHOTOFIELD_AI_FACES_ENABLED": "0",
        }
    )
    assert_one_line_error(result, "invalid simulated model")


def lone_thumbnails_on_the_loop(srv: ServerProcess, count: int) -> float:
    """Send `count` thumbnails one at a time; how many of their calls ran on an event loop."""
    name = "photofield_ai_batches_on_event_loop_total"
    before = metric(srv.url, name, model="visual")
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            r = client.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", THUMB)})
            assert r.status_code == 200
    return metric(srv.url, name, model="visual") - before


THUMB = jpeg(256, 192)


def assert_lone_calls_skip_the_thread_hops_only_when_alone(srv: ServerProcess) -> None:
    """Lone calls run on an event loop, but never while another request is in flight. Two of
    12 may miss it: with W=2 the client can have its answer, and the other worker the next
    request, before the first worker has counted its request as ended."""
    # After LONE_CALLS_KEPT fast lone calls (on the thread), the lone ones run on the loop.
    assert lone_thumbnails_on_the_loop(srv, LONE_CALLS_KEPT + 12) >= 10
    # Another request in the server (here one still sending its body): every call goes to its
    # thread, so the loop that request needs is never held.
    with request_in_flight(srv.url):
        assert lone_thumbnails_on_the_loop(srv, 12) == 0
    time.sleep(0.3)  # the server sees the connection close and ends that request
    assert lone_thumbnails_on_the_loop(srv, 12) >= 10
    # What a call on the loop answers (with W > 1, inside the inference process's submit) is
    # the model's row for this image.
    model = load_embedding_model(parse(FAST["PHOTOFIELD_AI_VISUAL_MODEL"]), CPU, "visual")
    assert isinstance(model.encoder, ClipImageEncoder)
    row = model.run(model.encoder.preprocess(THUMB, DecodeLimits())[None])[0]
    r = httpx.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", THUMB)})
    answered = decode_embedding(r.json()["images"][0]["embedding_f16_b64"])
    np.testing.assert_array_equal(answered, row.astype(np.float16))


def test_a_lone_request_alone_in_the_server_calls_the_model_on_the_event_loop(
    tmp_path: Path,
) -> None:
    """W=1 on an accelerator-like model: no thread hops for a request alone in the server
    (batcher inline_call_max_s, serving.activity); never while another request is in flight."""
    srv = start_server(tmp_path, None, None, **FAST)
    try:
        assert_lone_calls_skip_the_thread_hops_only_when_alone(srv)
    finally:
        assert srv.stop() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl timer slack is Linux's")
def test_a_call_sleeps_without_timer_slack_and_gives_the_thread_its_own_back() -> None:
    """The call's sleep ends when asked (as a CUDA wait does), not up to the 50 µs of timer
    slack later; the calling thread — the event loop, for a lone call — keeps its own slack."""
    prctl = ctypes.CDLL(None).prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    seen: list[int] = []

    def sleep(seconds: float) -> None:
        seen.append(prctl(simulated.PR_GET_TIMERSLACK, 0, 0, 0, 0))

    before = prctl(simulated.PR_GET_TIMERSLACK, 0, 0, 0, 0)
    prctl(simulated.PR_SET_TIMERSLACK, 123_000, 0, 0, 0)
    try:
        session = SimulatedSession(parse("simulated://textual?alpha_ms=1"), CPU)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "sleep", sleep)
            session.run(np.zeros((2, 77), np.int32))
        assert seen == [1]
        assert prctl(simulated.PR_GET_TIMERSLACK, 0, 0, 0, 0) == 123_000
    finally:
        prctl(simulated.PR_SET_TIMERSLACK, before, 0, 0, 0)
