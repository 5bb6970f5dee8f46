"""Assembles the ASGI app: the route table, middleware and exception handlers; the lifespan
starts and drains the engine. Everything it wires is built elsewhere (serving/, api/)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from photofield_ai.api import embeddings, faces, openai, service
from photofield_ai.api.auth import RequireApiKey
from photofield_ai.api.errors import EXCEPTION_HANDLERS
from photofield_ai.api.middleware import CollapseSlashes, LimitBodySize, RecordHttpMetrics
from photofield_ai.config import Settings
from photofield_ai.metrics import Metrics
from photofield_ai.serving.engine import Engine
from photofield_ai.serving.loading import LoadedModels

ROUTES = [
    Route("/image-embeddings", embeddings.image_embeddings, methods=["POST"]),
    Route("/image-embeddings", embeddings.head_image_embeddings, methods=["HEAD"]),
    Route("/text-embeddings", embeddings.text_embeddings, methods=["POST"]),
    Route("/text-embeddings", embeddings.head_text_embeddings, methods=["HEAD"]),
    Route("/faces", faces.faces, methods=["POST"]),
    Route("/faces", faces.head_faces, methods=["HEAD"]),
    Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
    Route("/v1/models", openai.models, methods=["GET"]),
    Route("/health", service.health, methods=["GET"]),
    Route("/ready", service.ready, methods=["GET"]),
    Route("/metrics", service.metrics, methods=["GET"]),
    Route("/openapi.json", service.openapi, methods=["GET"]),
]
# Liveness and readiness: open without the API key, and, like the scrape, never counted as a
# request in the server (they never wait on a model).
PROBES = frozenset({"/health", "/ready"})


def create_app(
    settings: Settings, models: LoadedModels | None, engine: Engine | None = None
) -> Starlette:
    """The ASGI app over an engine: by default one serving `models` in this process (with
    `models=None` the model endpoints answer 503: tests, a server whose models are absent);
    an HTTP worker passes its RemoteEngine. `app.state.engine` is what the server drains."""
    engine = engine or Engine(settings, models, Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.close()

    handlers: dict[Any, Any] = dict(EXCEPTION_HANDLERS)
    access = []
    if settings.api_key is not None:
        open_paths = PROBES | ({"/metrics"} if settings.metrics_open else set())
        access.append(
            Middleware(
                RequireApiKey,
                key=settings.api_key,
                open_paths=open_paths,
                metrics=engine.metrics,
            )
        )
    app = Starlette(
        routes=ROUTES,
        exception_handlers=handlers,
        lifespan=lifespan,
        middleware=[
            Middleware(CollapseSlashes),
            Middleware(
                RecordHttpMetrics,
                metrics=engine.metrics,
                endpoints=frozenset(r.path for r in ROUTES),
                in_flight=engine.requests,
                uncounted=PROBES | {"/metrics"},
            ),
            *access,  # before anything reads the body
            Middleware(
                LimitBodySize,
                max_bytes=settings.max_body_bytes,
                per_path={"/text-embeddings": settings.max_text_body_bytes},
            ),
        ],
    )
    app.state.engine = engine
    return app
