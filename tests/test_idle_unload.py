"""PHOTOFIELD_AI_MODEL_IDLE_UNLOAD_S: idle models let go of their sessions; the next request
loads them again and waits; requests that arrive during that load share it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from photofield_ai.app import create_app
from photofield_ai.config import Settings
from photofield_ai.memory import trim_malloc
from photofield_ai.metrics import Metrics
from photofield_ai.runtime.session import OnnxSession
from photofield_ai.serving.engine import may_hold_loop
from photofield_ai.serving.idle import IdleUnloader
from photofield_ai.serving.loading import LoadedModels
from photofield_ai.testing.server import serve_in_thread
from tests.conftest import CPU, ServerProcess, clip_model, start_server, wait_until
from tests.images import jpeg
from tests.probes import metric, rss_bytes


class SlowLoadSession(OnnxSession):
    """Takes 0.5 s longer to open again after an unload, and counts those loads."""

    loads = 0

    def _open(self) -> ort.InferenceSession:
        if self._session is None:
            time.sleep(0.5)
            type(self).loads += 1
        return super()._open()


def test_a_session_unloads_only_when_idle(tiny_float32: tuple[Path, Path]) -> None:
    model = clip_model(tiny_float32[1], "textual")
    session = model.session
    assert isinstance(session, OnnxSession)
    tokens = model.encoder.example_input(1)
    before = model.run(tokens)
    assert not session.unload_if_idle(60), "used just now"
    assert session.unload_if_idle(0) and not session.loaded
    assert not session.unload_if_idle(0), "nothing left to unload"
    np.testing.assert_array_equal(model.run(tokens), before)  # loaded again, same answer
    assert session.loaded


def test_an_unloaded_session_is_never_called_on_the_event_loop(
    tiny_float32: tuple[Path, Path],
) -> None:
    """Opening a session again takes seconds, which its recent lone calls do not show: the
    engine never lets such a call hold the event loop (batcher inline_call_max_s)."""
    model = clip_model(tiny_float32[1], "textual")
    session = model.session
    assert isinstance(session, OnnxSession)
    assert may_hold_loop(lambda: True, [session])
    assert not may_hold_loop(lambda: False, [session]), "another request in the server"
    assert session.unload_if_idle(0)
    assert not may_hold_loop(lambda: True, [session])
    model.run(model.encoder.example_input(1))
    assert may_hold_loop(lambda: True, [session])


def heavy_model(path: Path, mib: int = 96) -> Path:
    """One MatMul with a `mib`-MiB float32 weight: enough memory that its return shows in RSS."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cols = mib * 1024 * 1024 // 4 // 1024
    weight = np.random.default_rng(0).standard_normal((1024, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_an_unloaded_model_returns_its_memory(tmp_path: Path) -> None:
    """The point of idle unload: the weights leave the process. Anything that keeps a reference
    into the ONNX Runtime session (its NodeArgs do) would keep them all."""
    session = OnnxSession(heavy_model(tmp_path / "heavy.onnx"), CPU, intra_op_threads=1)
    session.run(np.ones((2, 1024), np.float32))
    unloader = IdleUnloader(0.0, {"heavy": [session]}, Metrics())
    trim_malloc()  # what loading left freed (the parsed model file) is not what is measured
    loaded = rss_bytes(os.getpid())
    assert unloader.check() == ["heavy"]
    released = (loaded - rss_bytes(os.getpid())) / 2**20
    assert released > 64, f"only {released:.0f} MiB of a 96 MiB weight returned"
    session.run(np.ones((1, 1024), np.float32))  # and it still answers, loaded again
    assert session.loaded


def test_a_running_call_keeps_its_session(tiny_float32: tuple[Path, Path]) -> None:
    model = clip_model(tiny_float32[0], "visual")
    session = model.session
    assert isinstance(session, OnnxSession)
    inside = threading.Event()
    leave = threading.Event()
    original = session._session
    assert original is not None
    run_inside = original.run

    class Held:
        """Stands in for the ONNX Runtime session while a call is inside it."""

        def run(self, *args: object) -> object:
            inside.set()
            leave.wait(10)
            return run_inside(*args)

    session._session = Held()
    call = threading.Thread(target=model.run, args=(model.encoder.example_input(1),))
    call.start()
    assert inside.wait(10)
    assert not session.unload_if_idle(0), "a call is running"
    leave.set()
    call.join(10)
    assert session.unload_if_idle(0)


def test_requests_during_a_reload_wait_for_the_same_load(
    tiny_float32: tuple[Path, Path],
) -> None:
    SlowLoadSession.loads = 0
    visual = clip_model(tiny_float32[0], "visual", session_type=SlowLoadSession)
    models = LoadedModels(CPU, visual, clip_model(tiny_float32[1], "textual"))
    app = create_app(Settings(model_idle_unload_s=0.3, adaptive_layout=False), models)
    with serve_in_thread(app) as url:
        wait_until(
            lambda: metric(url, "photofield_ai_model_loaded", model="visual") == 0,
            "the idle visual model is unloaded",
        )
        assert httpx.get(url + "/ready").status_code == 200, "unloaded is still ready"
        assert httpx.head(url + "/image-embeddings").status_code == 200

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                responses = await asyncio.gather(
                    *(
                        client.post(
                            url + "/image-embeddings",
                            files={"image": ("a.jpg", jpeg(200, 150, seed=i))},
                        )
                        for i in range(8)
                    )
                )
            return [r.status_code for r in responses]

        assert asyncio.run(burst()) == [200] * 8
        assert SlowLoadSession.loads == 1, "one load for everyone"
        assert metric(url, "photofield_ai_model_load_seconds_count", model="visual") == 1
        assert metric(url, "photofield_ai_model_loaded", model="visual") == 1
        assert metric(url, "photofield_ai_model_unloads_total", model="visual") >= 1


def test_unload_and_reload_on_a_real_server(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    srv = start_server(tmp_path, *tiny_float32, PHOTOFIELD_AI_MODEL_IDLE_UNLOAD_S="1")
    try:
        photo = jpeg(320, 240)

        def embed() -> str:
            r = httpx.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", photo)})
            assert r.status_code == 200, r.text
            return str(r.json()["images"][0]["embedding_f16_b64"])

        first = embed()
        for model in ("visual", "textual"):
            wait_until(
                lambda m=model: metric(srv.url, "photofield_ai_model_loaded", model=m) == 0,  # type: ignore[misc]
                f"the {model} model is unloaded",
            )
        assert embed() == first, "the reloaded model answers as before"
        r = httpx.post(srv.url + "/text-embeddings", json={"texts": ["after a nap"]})
        assert r.status_code == 200
        assert "visual: unloaded after 1 s without requests" in srv.log()
        assert "visual: loaded again in" in srv.log()
    finally:
        srv.stop()


def test_without_the_setting_nothing_unloads(server: ServerProcess) -> None:
    assert metric(server.url, "photofield_ai_model_unloads_total", model="visual") == 0
    assert "unloaded" not in server.log()
