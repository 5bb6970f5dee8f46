"""Builds the server: resolves and loads the models, wires batchers to sessions, makes the app."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from photofield_ai.api import routes
from photofield_ai.api.errors import EXCEPTION_HANDLERS
from photofield_ai.api.middleware import (
    CollapseSlashes,
    LimitBodySize,
    RecordHttpMetrics,
    TrackActiveRequests,
)
from photofield_ai.api.openapi import openapi_document
from photofield_ai.api.state import EmbeddingModel, ServerState
from photofield_ai.batcher import BatchPolicy, DynamicBatcher, PriorityGate
from photofield_ai.clip.tokenizer import ClipTokenizer
from photofield_ai.config import DEFAULT_TEXTUAL_MODEL, DEFAULT_VISUAL_MODEL, Settings
from photofield_ai.metrics import Metrics
from photofield_ai.models import resolve_model
from photofield_ai.runtime import ModelSession, available_providers, select_providers
from photofield_ai.runtime.providers import uses_accelerator

log = logging.getLogger("photofield_ai")


@dataclass(frozen=True)
class ModelChoice:
    visual: str
    textual: str
    note: str | None  # why the defaults were chosen, for the startup log


def choose_models(settings: Settings, providers: list[str]) -> ModelChoice:
    """Explicit settings win. Otherwise ViT-B/32 in the dtype fastest on this device: float16 on
    an accelerator (the original's default), float32 on a CPU, where float16 runs through casts
    and is slower."""
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
class LoadedModels:
    visual: ModelSession | None  # None: disabled with PHOTOFIELD_AI_VISUAL_MODEL=none
    textual: ModelSession | None
    providers: list[str]


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
        sessions[kind] = ModelSession(path, providers, expected_kind=kind)  # type: ignore[arg-type]
    return LoadedModels(sessions["visual"], sessions["textual"], providers)


def batch_policy(settings: Settings, accelerated: bool) -> BatchPolicy:
    """Defaults per device kind, from benchmarks/ (see README "Tuning"): a CPU gains little past
    batch 8 and one batch already uses every core (K=1); a GPU wants large batches and two in
    flight so that copies overlap compute."""
    default_n, default_k = (64, 2) if accelerated else (8, 1)
    timeout_ms = settings.batch_timeout_ms if settings.batch_timeout_ms is not None else 2.0
    return BatchPolicy(
        max_batch_size=settings.max_batch_size or default_n,
        batch_timeout_s=timeout_ms / 1000.0,
        max_concurrent_batches=settings.max_concurrent_batches or default_k,
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
        decode_limiter=anyio.CapacityLimiter(settings.decode_threads),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batchers: list[DynamicBatcher] = []
        if models is not None:
            policy = batch_policy(settings, uses_accelerator(models.providers))
            gate = PriorityGate()
            log.info(
                "Batching: max batch size %d, batch timeout %.1f ms, %d batch(es) in flight, "
                "queue of %d",
                policy.max_batch_size,
                policy.batch_timeout_s * 1000,
                policy.max_concurrent_batches,
                policy.max_queue,
            )
            for session in (models.visual, models.textual):
                if session is None:
                    continue
                await anyio.to_thread.run_sync(session.warmup)
                log.info(session.describe())
                metrics.model_info.labels(session.kind).info(_model_info(session))
                batcher = DynamicBatcher(
                    session.kind,
                    session.run,
                    policy,
                    metrics.for_batcher(session.kind),
                    # Text goes first; images yield to it (only matters when both are loaded).
                    holds=gate if session.kind == "textual" else None,
                    yields_to=gate if session.kind == "visual" else None,
                )
                batcher.start()
                batchers.append(batcher)
                metrics.queue_capacity.labels(session.kind).set(policy.max_queue)
                model = EmbeddingModel(batcher, session.input_size, _model_info(session))
                setattr(state, session.kind, model)
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            state.draining = True
            for batcher in batchers:
                await batcher.close(settings.shutdown_grace_s)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    route_list = [
        Route("/image-embeddings", routes.image_embeddings, methods=["POST"]),
        Route("/image-embeddings", routes.head_image_embeddings, methods=["HEAD"]),
        Route("/text-embeddings", routes.text_embeddings, methods=["POST"]),
        Route("/text-embeddings", routes.head_text_embeddings, methods=["HEAD"]),
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
