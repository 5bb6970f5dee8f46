"""The serving layer: device defaults (layout), model loading and families, the engine that
serves every model through one loop, and the module boundaries the architecture promises."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.types import Message, Receive, Scope, Send

import photofield_ai
from photofield_ai.api.middleware import RecordHttpMetrics
from photofield_ai.app import create_app
from photofield_ai.batcher import BatchPolicy
from photofield_ai.clip.wire import decode_embedding
from photofield_ai.config import Settings, SettingsError
from photofield_ai.families import FAMILIES, toy
from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.metrics import Metrics
from photofield_ai.runtime import ModelLoadError, OnnxSession
from photofield_ai.runtime.cpus import usable_cpus
from photofield_ai.serving import layout
from photofield_ai.serving.activity import RequestsInFlight
from photofield_ai.serving.engine import Engine, plan_models
from photofield_ai.serving.layout import ThreadLayout, batch_policy, thread_layout
from photofield_ai.serving.loading import (
    FaceModels,
    LoadedModels,
    choose_models,
    load_embedding_model,
)
from tests.conftest import CPU, clip_model, start_server
from tests.face_fakes import write_detector, write_recognizer
from tests.images import jpeg

SRC = Path(photofield_ai.__file__).parent


# -- layout: the one home of device defaults ----------------------------------------------------
def test_thread_layout_defaults_per_device_and_model() -> None:
    """CPU (adaptive, the default): both CLIP models run one single-threaded batch per usable
    CPU when busy and a lone batch on a second session with every core, whose threads spin
    during its calls (the visual one's only in an idle server); without it, the visual model
    one single-threaded batch per CPU, the textual one a batch at a time on every core. An
    accelerator: two batches in flight. Explicit settings win everywhere."""
    cpus = usable_cpus()
    default = Settings()
    for kind in ("visual", "textual"):
        expected = (
            ThreadLayout(1, cpus, 0, alone_spins=True, alone_only_in_idle_server=kind == "visual")
            if cpus > 1
            else thread_layout(Settings(adaptive_layout=False), kind, False)
        )
        assert thread_layout(default, kind, False) == expected
    fixed = Settings(adaptive_layout=False)
    assert thread_layout(fixed, "visual", False) == ThreadLayout(1, cpus)
    assert thread_layout(fixed, "textual", False) == ThreadLayout(0, 1)
    assert thread_layout(default, "faces", False) == ThreadLayout(0, 1)
    assert thread_layout(default, "visual", True) == ThreadLayout(0, 2)
    assert thread_layout(default, "textual", True) == ThreadLayout(0, 2)
    two = Settings(intra_op_threads=2)
    assert thread_layout(two, "visual", False) == ThreadLayout(2, max(1, cpus // 2))
    assert thread_layout(two, "textual", False) == ThreadLayout(2, 1)
    explicit = Settings(intra_op_threads=3, max_concurrent_batches=5)
    for kind in ("visual", "textual"):
        for accelerated in (False, True):
            assert thread_layout(explicit, kind, accelerated) == ThreadLayout(3, 5)


def test_batch_policy_defaults_and_overrides() -> None:
    cpu = batch_policy(Settings(adaptive_layout=False), "textual", False)
    assert cpu == BatchPolicy(8, 0.002, 1, 1024, None)
    gpu = batch_policy(Settings(), "visual", True)
    assert (gpu.max_batch_size, gpu.max_concurrent_batches) == (64, 2)
    assert batch_policy(Settings(), "faces", False, dynamic_batch=False).max_batch_size == 1
    explicit = Settings(
        max_batch_size=3,
        batch_timeout_ms=0,
        max_queue=7,
        queue_timeout_ms=250,
        max_concurrent_batches=4,
        workers=1,
    )
    assert batch_policy(explicit, "visual", True) == BatchPolicy(
        3, 0.0, 4, 7, 0.25, inline_call_max_s=0.002
    )


def test_only_an_inference_process_answers_a_lone_request_inside_submit() -> None:
    """With W > 1 the batchers live in the inference process, whose loop reads no HTTP: a lone
    batch allowed on the loop is called inside submit_many. With one process, where the loop
    also reads requests, it waits for the batch loop's turn."""
    for kind in ("visual", "textual"):
        assert batch_policy(Settings(workers=2), kind, True).inline_in_submit
        assert not batch_policy(Settings(workers=1), kind, True).inline_in_submit
    assert batch_policy(Settings(), "visual", True).inline_in_submit == (usable_cpus() > 1)
    assert not batch_policy(Settings(), "visual", False).inline_in_submit  # CPU: W=1


def test_only_an_accelerator_calls_a_lone_batch_on_the_event_loop() -> None:
    """A lone CPU call takes tens of ms on every core: never on the loop. An accelerator's
    lone call may be (batcher, inline_call_max_s), whatever the N, T and K settings."""
    for kind in ("visual", "textual", "faces"):
        assert batch_policy(Settings(), kind, False).inline_call_max_s == 0
        assert batch_policy(Settings(), kind, True).inline_call_max_s == 0.002
    # PHOTOFIELD_AI_INLINE_CALL_MAX_MS sets the window on either device; 0 turns it off.
    assert batch_policy(Settings(inline_call_max_ms=0), "visual", True).inline_call_max_s == 0
    assert batch_policy(Settings(inline_call_max_ms=5), "textual", True).inline_call_max_s == 0.005
    assert batch_policy(Settings(inline_call_max_ms=50), "visual", False).inline_call_max_s == 0.05


def test_only_the_spinning_every_core_session_waits_for_an_idle_server() -> None:
    """The adaptive layout's visual every-core session spins during its calls: its policy keeps
    it for a lone batch with no other request in the server. Not the textual one (no spinning),
    not a fixed layout, not an accelerator."""
    adaptive = usable_cpus() > 1
    assert batch_policy(Settings(), "visual", False).alone_only_in_idle_server == adaptive
    assert not batch_policy(Settings(), "textual", False).alone_only_in_idle_server
    fixed = Settings(adaptive_layout=False)
    assert not batch_policy(fixed, "visual", False).alone_only_in_idle_server
    assert not batch_policy(Settings(), "visual", True).alone_only_in_idle_server


def test_only_the_adaptive_visual_model_waits_for_the_items_it_expects() -> None:
    """Waiting pays where batching pays: the visual model on a CPU (its per-item cost falls with
    batch size); not the textual model, not an accelerator's queue, not a fixed CPU layout."""
    adaptive = Settings()
    if usable_cpus() > 1:
        assert batch_policy(adaptive, "visual", False).wait_for_expected_s > 0
    assert batch_policy(adaptive, "textual", False).wait_for_expected_s == 0
    assert batch_policy(adaptive, "visual", True).wait_for_expected_s == 0
    fixed = Settings(adaptive_layout=False)
    assert batch_policy(fixed, "visual", False).wait_for_expected_s == 0


def test_device_defaults_are_described_from_the_constants() -> None:
    """Every setting whose default is the device's (None, no words of its own) is described
    by layout, from the constants it uses."""
    words = layout.describe_defaults()
    device_defaulted = {
        f.name
        for f in dataclasses.fields(Settings)
        if f.default is None
        and not f.metadata.get("default_words")
        and f.name not in ("visual_model", "textual_model")
    }
    assert set(words) == device_defaulted
    assert str(layout.CPU_MAX_BATCH_SIZE) in words["max_batch_size"]
    assert str(layout.ACCELERATOR_MAX_BATCH_SIZE) in words["max_batch_size"]


# -- loading -------------------------------------------------------------------------------------
def test_default_models_follow_the_device() -> None:
    cpu = choose_models(Settings(), CPU)
    assert cpu.visual.endswith("clip-vit-base-patch32-visual-float32.onnx")
    assert cpu.note is not None and "ViT-B/32 float32" in cpu.note
    gpu = choose_models(Settings(), ["CUDAExecutionProvider", *CPU])
    assert gpu.textual.endswith("clip-vit-base-patch32-textual-float16.onnx")
    explicit = choose_models(Settings(visual_model="a.onnx", textual_model="b.onnx"), CPU)
    assert (explicit.visual, explicit.textual, explicit.note) == ("a.onnx", "b.onnx", None)


def test_a_family_without_defaults_and_an_unknown_family_are_setting_errors() -> None:
    with pytest.raises(SettingsError, match="toy model family has no default models"):
        choose_models(Settings(model_family="toy"), CPU)
    with pytest.raises(SettingsError, match="MODEL_FAMILY must be one of clip, toy"):
        choose_models(Settings(model_family="siglip"), CPU)


def test_a_model_of_another_family_is_refused(
    tmp_path: Path, tiny_float32: tuple[Path, Path]
) -> None:
    visual, _ = toy.write_models(tmp_path)
    with pytest.raises(ModelLoadError, match="is a visual model"):
        load_embedding_model(visual, CPU, "textual", FAMILIES["toy"])
    with pytest.raises(ModelLoadError, match="toy image input"):
        load_embedding_model(tiny_float32[1], CPU, "visual", FAMILIES["toy"])


# -- engine --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face_sessions(tmp_path_factory: pytest.TempPathFactory) -> FaceModels:
    folder = tmp_path_factory.mktemp("faces")
    return FaceModels(
        OnnxSession(write_detector(folder / "d.onnx"), CPU),
        OnnxSession(write_recognizer(folder / "r.onnx"), CPU),
    )


def test_every_model_is_planned_by_one_loop(
    tiny_float32: tuple[Path, Path], face_sessions: FaceModels
) -> None:
    models = LoadedModels(
        CPU,
        clip_model(tiny_float32[0], "visual"),
        clip_model(tiny_float32[1], "textual"),
        face_sessions,
    )
    plans = {p.name: p for p in plan_models(Settings(), models)}
    assert list(plans) == ["visual", "textual", "face_detector", "face_recognizer"]
    assert [(p.indexing, p.search_first) for p in plans.values()] == [
        (True, "yields"),
        (False, "holds"),
        (True, None),
        (True, None),
    ]
    # The fake detector's file fixes the batch axis at 1; the recognizer's is dynamic.
    assert plans["face_detector"].policy.max_batch_size == 1
    assert plans["face_recognizer"].policy.max_batch_size == layout.CPU_MAX_BATCH_SIZE
    assert plans["visual"].info["input_size"] == "224"


def test_engine_starts_serves_and_drains(
    tiny_float32: tuple[Path, Path], face_sessions: FaceModels
) -> None:
    models = LoadedModels(
        CPU,
        clip_model(tiny_float32[0], "visual"),
        clip_model(tiny_float32[1], "textual"),
        face_sessions,
    )

    async def scenario() -> None:
        engine = Engine(Settings(decode_threads=2), models, Metrics())
        assert not engine.ready and engine.visual is None
        await engine.start()
        assert engine.ready and engine.faces is not None
        assert engine.visual is not None and engine.textual is not None
        tokens = engine.textual.encoder.tokenize("hawk")
        (row,) = await engine.textual.batcher.submit_many([tokens])
        np.testing.assert_array_equal(row, models.textual.run(tokens[None])[0])
        await engine.close()
        assert engine.draining and not engine.ready

    asyncio.run(scenario())


def test_engine_without_models_is_ready_and_serves_nothing() -> None:
    async def scenario() -> None:
        engine = Engine(Settings(), None, Metrics())
        await engine.start()
        assert engine.ready and (engine.visual, engine.textual, engine.faces) == (None, None, None)
        await engine.close()

    asyncio.run(scenario())


# -- a second family, end to end -----------------------------------------------------------------
def test_the_toy_family_serves_over_http(tmp_path: Path) -> None:
    """The seam: a family written as one module and one registry line serves both endpoints."""
    visual, textual = toy.write_models(tmp_path / "models")
    srv = start_server(tmp_path, visual, textual, PHOTOFIELD_AI_MODEL_FAMILY="toy")
    try:
        photo = jpeg(300, 200)
        r = httpx.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", photo)})
        assert r.status_code == 200, r.text
        got = decode_embedding(r.json()["images"][0]["embedding_f16_b64"])
        image_model = load_embedding_model(visual, CPU, "visual", FAMILIES["toy"])
        assert isinstance(image_model.encoder, toy.ToyImageEncoder)
        want = image_model.run(image_model.encoder.preprocess(photo, DecodeLimits())[None])[0]
        assert got.shape == (32,)
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float16), atol=1e-3)

        t = httpx.post(srv.url + "/text-embeddings", json={"texts": ["hawk", "hawk!"]})
        assert t.status_code == 200, t.text
        text_model = load_embedding_model(textual, CPU, "textual", FAMILIES["toy"])
        assert isinstance(text_model.encoder, toy.ToyTextEncoder)
        rows = text_model.run(np.stack([text_model.encoder.tokenize(x) for x in ("hawk", "hawk!")]))
        for item, row in zip(t.json()["texts"], rows, strict=True):
            vector = decode_embedding(item["embedding_f16_b64"]).astype(np.float32)
            np.testing.assert_allclose(vector, row.astype(np.float16), atol=1e-3)
        assert "(toy)" in srv.log()
    finally:
        assert srv.stop() == 0


def test_toy_tokenizer_is_bytes_with_start_end_and_padding() -> None:
    spec = FAMILIES["toy"]
    encoder = spec.text(
        photofield_ai.families.ModelSpec("toy", "textual", 6, "tensor(int64)", "e", "f", 2, "p", ())
    )
    assert encoder.tokenize("ab").tolist() == [1, 97 + 3, 98 + 3, 2, 0, 0]
    assert encoder.tokenize("abcdefgh").tolist() == [1, 100, 101, 102, 103, 2]


# -- the architecture's arrows -------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("photofield_ai")}


def _package_of(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0]


def test_dependencies_point_one_way() -> None:
    """api → serving → batcher/runtime/families; clip/ and faces/ pure; app.py imported only
    by the CLI."""
    forbidden = {
        "serving": ("photofield_ai.api", "photofield_ai.app"),
        "batcher": ("photofield_ai.api", "photofield_ai.serving", "photofield_ai.runtime"),
        "runtime": ("photofield_ai.api", "photofield_ai.serving", "photofield_ai.batcher"),
        "families": ("photofield_ai.api", "photofield_ai.serving", "photofield_ai.batcher"),
        "clip": (
            "photofield_ai.api",
            "photofield_ai.serving",
            "photofield_ai.batcher",
            "photofield_ai.runtime",
        ),
        "imaging": (
            "photofield_ai.api",
            "photofield_ai.serving",
            "photofield_ai.batcher",
            "photofield_ai.runtime",
            "photofield_ai.clip",
            "photofield_ai.faces",
        ),
        "faces": (
            "photofield_ai.api",
            "photofield_ai.serving",
            "photofield_ai.batcher",
            "photofield_ai.runtime",
        ),
    }
    problems = []
    for path in SRC.rglob("*.py"):
        package = _package_of(path)
        for name in _imports(path):
            if name == "photofield_ai.app" and path.name != "cli.py":
                problems.append(f"{path.relative_to(SRC)} imports app.py")
            for prefix in forbidden.get(package, ()):
                if name.startswith(prefix):
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert problems == []


def test_app_is_assembly_only() -> None:
    assert len((SRC / "app.py").read_text().splitlines()) < 120


# -- requests in flight (serving.activity): what a lone request asks before it runs ------------
def test_probes_and_scrapes_are_not_requests_in_flight() -> None:
    """A liveness probe or a scrape never waits on a model: it must not change how a lone
    request runs (on the event loop, on every core), so the count leaves it out."""
    asyncio.run(_requests_counted_by_path())
    # The app leaves out exactly the probes and the scrape.
    app_middleware = create_app(Settings(), None).user_middleware
    recorder = next(m for m in app_middleware if m.cls is RecordHttpMetrics)  # type: ignore[comparison-overlap]
    assert recorder.kwargs["uncounted"] == {"/health", "/ready", "/metrics"}


async def _requests_counted_by_path() -> None:
    seen: dict[str, int] = {}
    requests = RequestsInFlight()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen[scope["path"]] = requests.count
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    paths = ("/metrics", "/health", "/image-embeddings")
    middleware = RecordHttpMetrics(
        app, Metrics(), frozenset(paths), requests, uncounted=frozenset(paths[:2])
    )
    for path in paths:
        await middleware({"type": "http", "path": path, "method": "GET"}, receive, send)
    assert seen == {"/metrics": 0, "/health": 0, "/image-embeddings": 1}
    assert requests.count == 0
