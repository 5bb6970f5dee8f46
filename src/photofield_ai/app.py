"""Builds the server: resolves and loads the models, wires batchers to sessions, makes the app."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from photofield_ai.api import faces as faces_api
from photofield_ai.api import routes
from photofield_ai.api.errors import EXCEPTION_HANDLERS
from photofield_ai.api.middleware import (
    CollapseSlashes,
    LimitBodySize,
    RecordHttpMetrics,
    TrackActiveRequests,
)
from photofield_ai.api.openapi import openapi_document
from photofield_ai.api.state import EmbeddingModel, FacePipeline, ServerState
from photofield_ai.batcher import BatchPolicy, DynamicBatcher, PriorityGate
from photofield_ai.clip.tokenizer import ClipTokenizer
from photofield_ai.config import DEFAULT_TEXTUAL_MODEL, DEFAULT_VISUAL_MODEL, Settings
from photofield_ai.metrics import Metrics
from photofield_ai.models import ModelResolutionError, resolve_model
from photofield_ai.runtime import (
    ModelLoadError,
    ModelSession,
    OnnxModel,
    available_providers,
    select_providers,
)
from photofield_ai.runtime.cpus import usable_cpus
from photofield_ai.runtime.priority import call_in_lowered_thread, lowered_executor
from photofield_ai.runtime.providers import uses_accelerator

log = logging.getLogger("photofield_ai")


@dataclass(frozen=True)
class ModelChoice:
    visual: str
    textual: str
    note: str | None  # why the defaults were chosen, for the startup log


def choose_models(settings: Settings, providers: list[str]) -> ModelChoice:
    """Explicit settings win. Otherwise ViT-B/32 in the dtype fastest on this device: float16 on
    an accelerator (the original's default), float32 on a CPU, where float16 was no faster in
    our runs (BENCHMARKS.md: slower in one, level in the other) and needs the crash guard."""
    dtype = "float16" if uses_accelerator(providers) else "float32"
    note = None
    if settings.visual_model is None or settings.textual_model is None:
        device = "an accelerator" if dtype == "float16" else "CPU only"
        note = (
            f"Default models: ViT-B/32 {dtype} ({device}; set PHOTOFIELD_AI_VISUAL_MODEL and "
            "PHOTOFIELD_AI_TEXTUAL_MODEL to choose)"
        )
    return ModelChoice(
        settings.visual_model or DEFAULT_VISUAL_MODEL.format(dtype=dtype),
        settings.textual_model or DEFAULT_TEXTUAL_MODEL.format(dtype=dtype),
        note,
    )


DISABLED = frozenset({"none", "off", "disabled"})


@dataclass(frozen=True)
class FaceModels:
    detector: OnnxModel
    recognizer: OnnxModel


@dataclass(frozen=True)
class LoadedModels:
    visual: ModelSession | None  # None: disabled with PHOTOFIELD_AI_VISUAL_MODEL=none
    textual: ModelSession | None
    providers: list[str]
    faces: FaceModels | None = None


def _resolve(value: str, settings: Settings, progress: IO[str] | None) -> Path | None:
    if value.strip().lower() in DISABLED:
        return None
    return resolve_model(value, settings.models_dir, progress)


def resolve_models(
    settings: Settings, progress: IO[str] | None = None
) -> tuple[list[str], Path | None, Path | None]:
    """Select providers and turn both model settings into local files (downloading them).
    A model set to `none` is disabled: its endpoint answers 503."""
    available = available_providers()
    log.info("Available providers: %s", ", ".join(available))
    providers = select_providers(settings.runtime, settings.providers, available)
    log.info("Using providers: %s", ", ".join(providers))
    choice = choose_models(settings, providers)
    if choice.note:
        log.info(choice.note)
    visual = _resolve(choice.visual, settings, progress)
    textual = _resolve(choice.textual, settings, progress)
    return providers, visual, textual


def load_models(settings: Settings, progress: IO[str] | None = None) -> LoadedModels:
    providers, visual_path, textual_path = resolve_models(settings, progress)
    sessions: dict[str, ModelSession | None] = {}
    for kind, path in (("visual", visual_path), ("textual", textual_path)):
        if path is None:
            log.info("The %s model is disabled", kind)
            sessions[kind] = None
            continue
        log.info("Loading %s model: %s", kind, path)
        sessions[kind] = call_in_lowered_thread(
            settings.indexing_nice if kind == "visual" else 0,
            functools.partial(
                ModelSession,
                path,
                providers,
                expected_kind=kind,  # type: ignore[arg-type]
                intra_op_threads=thread_layout(
                    settings, kind, uses_accelerator(providers)
                ).intra_op_threads,
            ),
        )
    faces = load_face_models(settings, providers, progress)
    return LoadedModels(sessions["visual"], sessions["textual"], providers, faces)


def resolve_face_models(settings: Settings, progress: IO[str] | None = None) -> tuple[Path, Path]:
    return (
        resolve_model(settings.face_detector_model, settings.models_dir, progress),
        resolve_model(settings.face_recognizer_model, settings.models_dir, progress),
    )


def _check_face_models(detector: OnnxModel, recognizer: OnnxModel) -> None:
    shape = detector.input_shape
    if len(shape) != 4 or shape[1] != 3 or sorted(_output_roles(detector)) != [2, 4, 10]:
        raise ModelLoadError(
            f"{detector.path} is not a RetinaFace detector (input [1, 3, H, W]; outputs loc, "
            "conf, landmarks)"
        )
    if recognizer.input_shape[1:] != [3, 112, 112]:
        raise ModelLoadError(
            f"{recognizer.path} is not a face recognizer with [batch, 3, 112, 112] input"
        )


def load_face_models(
    settings: Settings, providers: list[str], progress: IO[str] | None = None
) -> FaceModels | None:
    """Explicit PHOTOFIELD_AI_FACES_ENABLED=1: a failure is fatal. Unset (the default): the
    server still starts, /faces answers 503, and the log says why."""
    if settings.faces_enabled is False:
        log.info("Faces are disabled")
        return None
    try:
        detector_path, recognizer_path = resolve_face_models(settings, progress)
        log.info("Loading face detector: %s", detector_path)
        nice = settings.indexing_nice
        detector = call_in_lowered_thread(nice, lambda: OnnxModel(detector_path, providers))
        log.info("Loading face recognizer: %s", recognizer_path)
        recognizer = call_in_lowered_thread(nice, lambda: OnnxModel(recognizer_path, providers))
        _check_face_models(detector, recognizer)
    except (ModelResolutionError, ModelLoadError) as exc:
        if settings.faces_enabled:
            raise
        log.warning(
            "Faces unavailable, /faces answers 503: %s (set PHOTOFIELD_AI_FACES_ENABLED=0 "
            "to not load them, or =1 to make this fatal)",
            exc,
        )
        return None
    return FaceModels(detector, recognizer)


def _output_roles(detector: OnnxModel) -> dict[int, int]:
    """Output index by the size of its last axis: 4 = box offsets, 2 = scores, 10 = landmarks."""
    roles: dict[int, int] = {}
    for i, output in enumerate(detector.outputs):
        last = output.shape[-1] if output.shape else None
        if isinstance(last, int) and last in (2, 4, 10):
            roles[last] = i
    return roles


def detector_runner(detector: OnnxModel) -> Callable[[np.ndarray], np.ndarray]:
    """The detector's three outputs as one [B, N, 16] array (loc | conf | landmarks), the one
    array per batch the batcher hands back row by row."""
    roles = _output_roles(detector)

    def run(batch: np.ndarray) -> np.ndarray:
        outputs = detector.run(batch)
        return np.concatenate(
            [outputs[roles[4]], outputs[roles[2]], outputs[roles[10]]], axis=-1
        ).astype(np.float32)

    return run


def recognizer_runner(recognizer: OnnxModel) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        return recognizer.run(batch)[0]

    return run


@dataclass(frozen=True)
class ThreadLayout:
    """How one CLIP model uses the device: threads per session call, session calls at once."""

    intra_op_threads: int  # 0: ONNX Runtime's default, one per physical core
    concurrent_batches: int  # K


def thread_layout(settings: Settings, kind: str, accelerated: bool) -> ThreadLayout:
    """Defaults per device kind and model, from benchmarks/ (README "Tuning"); explicit settings
    always win.

    On a CPU the visual model serves indexing, where throughput is what counts: one
    single-threaded batch per core spends no time in ONNX Runtime's thread barriers (measured on
    2 cores: 16.0 vs 12-14 images/s at 32 clients, steadier too). The textual model serves
    searches, lone requests whose latency is what counts: one batch at a time across all cores;
    any kind but "visual" gets this layout, the face models included (whose sessions only take
    K from it and keep ONNX Runtime's threads). On an accelerator the device does the work: two
    batches in flight overlap copies and compute.
    """
    threads = settings.intra_op_threads
    if accelerated:
        return ThreadLayout(threads or 0, settings.max_concurrent_batches or 2)
    if kind == "visual":
        threads = threads or 1
        return ThreadLayout(
            threads, settings.max_concurrent_batches or max(1, usable_cpus() // threads)
        )
    return ThreadLayout(threads or 0, settings.max_concurrent_batches or 1)


def batch_policy(settings: Settings, accelerated: bool, concurrent_batches: int) -> BatchPolicy:
    """N defaults per device kind (README "Tuning"): a CPU gains little past batch 8 while every
    item waits for its whole batch; a GPU wants large batches."""
    timeout_ms = settings.batch_timeout_ms if settings.batch_timeout_ms is not None else 2.0
    return BatchPolicy(
        max_batch_size=settings.max_batch_size or (64 if accelerated else 8),
        batch_timeout_s=timeout_ms / 1000.0,
        max_concurrent_batches=concurrent_batches,
        max_queue=settings.max_queue,
        queue_timeout_s=(
            settings.queue_timeout_ms / 1000.0 if settings.queue_timeout_ms is not None else None
        ),
    )


def _model_info(session: ModelSession) -> dict[str, str]:
    return {
        "path": str(session.path),
        "providers": ",".join(session.providers),
        "input_type": session.signature.input_type,
        "output_type": session.signature.output_type,
        "input_size": str(session.input_size),
    }


def create_app(settings: Settings, models: LoadedModels | None) -> Starlette:
    """The ASGI app. With `models=None` it serves 503 on the embedding endpoints (tests, and a
    server whose models are absent)."""
    metrics = Metrics()
    state = ServerState(
        settings=settings,
        metrics=metrics,
        visual=None,
        textual=None,
        tokenizer=ClipTokenizer.from_package(),
        decode_threads=lowered_executor(
            settings.indexing_nice, settings.decode_threads, "image-decode"
        ),
        tokenize_limiter=anyio.CapacityLimiter(2),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batchers: list[DynamicBatcher] = []
        executors: list[ThreadPoolExecutor] = []

        def indexing_threads(name: str, policy: BatchPolicy) -> ThreadPoolExecutor:
            """Session calls of an indexing model run at a lower priority than search."""
            executor = lowered_executor(
                settings.indexing_nice, policy.max_concurrent_batches, f"{name}-inference"
            )
            executors.append(executor)
            return executor

        if models is not None:
            accelerated = uses_accelerator(models.providers)
            gate = PriorityGate()
            for session in (models.visual, models.textual):
                if session is None:
                    continue
                layout = thread_layout(settings, session.kind, accelerated)
                policy = batch_policy(settings, accelerated, layout.concurrent_batches)
                await anyio.to_thread.run_sync(session.warmup)
                log.info(session.describe())
                log.info(
                    "%s batching: max batch size %d, batch timeout %.1f ms, %d batch(es) in "
                    "flight of %s intra-op thread(s) each, queue of %d%s",
                    session.kind.capitalize(),
                    policy.max_batch_size,
                    policy.batch_timeout_s * 1000,
                    policy.max_concurrent_batches,
                    layout.intra_op_threads or "ONNX Runtime's default number of",
                    policy.max_queue,
                    f", at nice +{settings.indexing_nice}" if session.kind == "visual" else "",
                )
                metrics.model_info.labels(session.kind).info(_model_info(session))
                batcher = DynamicBatcher(
                    session.kind,
                    session.run,
                    policy,
                    metrics.for_batcher(session.kind),
                    # Text goes first; images yield to it (only matters when both are loaded).
                    holds=gate if session.kind == "textual" else None,
                    yields_to=gate if session.kind == "visual" else None,
                    executor=(
                        indexing_threads(session.kind, policy) if session.kind == "visual" else None
                    ),
                )
                batcher.start()
                batchers.append(batcher)
                metrics.queue_capacity.labels(session.kind).set(policy.max_queue)
                model = EmbeddingModel(batcher, session.input_size, _model_info(session))
                setattr(state, session.kind, model)
            if models.faces is not None:
                policy = batch_policy(
                    settings,
                    accelerated,
                    thread_layout(settings, "faces", accelerated).concurrent_batches,
                )
                face_batchers = []
                for name, face_model, runner in (
                    (
                        "face_detector",
                        models.faces.detector,
                        detector_runner(models.faces.detector),
                    ),
                    (
                        "face_recognizer",
                        models.faces.recognizer,
                        recognizer_runner(models.faces.recognizer),
                    ),
                ):
                    model_policy = (
                        policy
                        if face_model.dynamic_batch
                        else dataclasses.replace(policy, max_batch_size=1)
                    )
                    batcher = DynamicBatcher(
                        name,
                        runner,
                        model_policy,
                        metrics.for_batcher(name),
                        executor=indexing_threads(name, model_policy),
                    )
                    batcher.start()
                    batchers.append(batcher)
                    face_batchers.append(batcher)
                    metrics.queue_capacity.labels(name).set(policy.max_queue)
                    metrics.model_info.labels(name).info(
                        {
                            "path": str(face_model.path),
                            "providers": ",".join(face_model.providers),
                            "input_type": face_model.input_type,
                            "output_type": "",
                            "input_size": str(face_model.input_shape[-1]),
                        }
                    )
                state.faces = FacePipeline(
                    face_batchers[0],
                    face_batchers[1],
                    settings.face_score_threshold,
                    settings.face_max_faces,
                )
                log.info("Face detection and recognition ready")
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            state.draining = True
            for batcher in batchers:
                await batcher.close(settings.shutdown_grace_s)
            for executor in [*executors, state.decode_threads]:
                executor.shutdown(wait=False)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    route_list = [
        Route("/image-embeddings", routes.image_embeddings, methods=["POST"]),
        Route("/image-embeddings", routes.head_image_embeddings, methods=["HEAD"]),
        Route("/text-embeddings", routes.text_embeddings, methods=["POST"]),
        Route("/text-embeddings", routes.head_text_embeddings, methods=["HEAD"]),
        Route("/faces", faces_api.faces, methods=["POST"]),
        Route("/faces", faces_api.head_faces, methods=["HEAD"]),
        Route("/health", routes.health, methods=["GET"]),
        Route("/ready", routes.ready, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    endpoints = frozenset(r.path for r in route_list)
    handlers: dict[Any, Any] = dict(EXCEPTION_HANDLERS)
    app = Starlette(
        routes=route_list,
        exception_handlers=handlers,
        lifespan=lifespan,
        middleware=[
            Middleware(CollapseSlashes),
            Middleware(TrackActiveRequests, state=state),
            Middleware(RecordHttpMetrics, metrics=metrics, endpoints=endpoints),
            Middleware(LimitBodySize, max_bytes=settings.max_body_bytes),
        ],
    )
    app.state.server = state
    return app
