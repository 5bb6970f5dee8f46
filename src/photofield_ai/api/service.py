"""Endpoints about the server itself: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from photofield_ai.api.openai import model_id
from photofield_ai.api.openapi import openapi_document
from photofield_ai.api.requests import engine_of


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    engine = engine_of(request)
    if engine.ready:
        return JSONResponse({"status": "ready"})
    reason = "shutting down" if engine.draining else "models are loading"
    return JSONResponse({"status": "not ready", "error": reason}, status_code=503)


async def metrics(request: Request) -> Response:
    body, content_type = engine_of(request).metrics.exposition()
    return Response(body, media_type=content_type)


async def openapi(request: Request) -> Response:
    engine = engine_of(request)
    served = engine.textual or engine.visual
    dimensions = served.spec.output_dim if served is not None else None
    return JSONResponse(openapi_document(model_id(engine), dimensions))
