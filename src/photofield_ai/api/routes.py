"""The Photofield contract: /image-embeddings and /text-embeddings, plus health and metrics.

Handlers parse and validate, run decoding and tokenization in worker threads (never on the event
loop), submit items to the model's batcher and encode the results. They know nothing of ONNX.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from photofield_ai.api.errors import ApiError
from photofield_ai.api.middleware import ARRIVED_WHILE_DRAINING
from photofield_ai.api.state import EmbeddingModel, ServerState
from photofield_ai.clip.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageFormatError,
    preprocess_image,
)
from photofield_ai.clip.wire import encode_embedding

T = TypeVar("T")


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def refuse_if_draining(request: Request) -> None:
    """Requests that arrived after SIGTERM get 503; those accepted before it finish."""
    if request.scope.get(ARRIVED_WHILE_DRAINING, False):
        raise ApiError(503, "server is shutting down", {"Retry-After": "1"})


def _model(request: Request, name: str) -> EmbeddingModel:
    state = server_state(request)
    refuse_if_draining(request)
    model: EmbeddingModel | None = getattr(state, name)
    if model is None:
        raise ApiError(503, f"no {name} model is loaded on this server")
    return model


class _ClientDisconnected(Exception):
    pass


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, but cancel it (dropping its queued items) if the client goes away first."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
    if work_task in done:
        return work_task.result()
    work_task.cancel()
    raise _ClientDisconnected


def _embedding_fields(vector: np.ndarray[Any, Any]) -> dict[str, Any]:
    encoded = encode_embedding(vector)
    return {
        "embedding_f16_b64": encoded.embedding_f16_b64,
        "embedding_inv_norm_f16_uint16": encoded.embedding_inv_norm_f16_uint16,
    }


async def head_image_embeddings(request: Request) -> Response:
    _model(request, "visual")
    return Response(status_code=200)


async def head_text_embeddings(request: Request) -> Response:
    _model(request, "textual")
    return Response(status_code=200)


async def in_decode_thread(state: ServerState, fn: Callable[..., T], *args: Any) -> T:
    """Run image work on the decode threads (lowered with the indexing priority)."""
    return await asyncio.get_running_loop().run_in_executor(
        state.decode_threads, functools.partial(fn, *args)
    )


def _describe_part(index: int, field: str, filename: str | None) -> str:
    return f"image {index} (field {field!r}, filename {filename!r})"


async def _preprocess_part(
    state: ServerState, size: int, index: int, field: str, upload: UploadFile
) -> np.ndarray[Any, Any]:
    data = await upload.read()
    started = time.perf_counter()
    try:
        array = await in_decode_thread(
            state, preprocess_image, data, size, state.settings.max_image_pixels
        )
    except ImageDecodeError as exc:
        where = _describe_part(index, field, upload.filename)
        if isinstance(exc, ImageTooLargeError):
            status = 413
        elif isinstance(exc, UnsupportedImageFormatError):
            status = 415
        else:
            status = 422
        raise ApiError(status, f"{where}: {exc}") from None
    state.metrics.preprocess.labels("image").observe(time.perf_counter() - started)
    return array


@contextlib.asynccontextmanager
async def read_file_parts(request: Request) -> AsyncIterator[list[tuple[str, UploadFile]]]:
    """The request's file parts, in order (every file part is an image, whatever its field
    name). Anything else in the body is the client's mistake: 4xx."""
    state = server_state(request)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "expected a multipart/form-data body with one or more image files, "
            f"got Content-Type {content_type or 'none'!r}",
        )
    limit = state.settings.max_images_per_request
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except HTTPException as exc:
        if "Too many" in str(exc.detail):
            raise ApiError(
                413, f"more than {limit} parts in one request; send at most {limit} images"
            ) from None
        raise ApiError(400, f"malformed multipart body: {exc.detail}") from None
    try:
        parts: list[tuple[str, UploadFile]] = []
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise ApiError(
                    400, f"form field {field!r} is text, not a file; send images as file parts"
                )
            parts.append((field, value))
        if not parts:
            raise ApiError(
                400,
                "no image files in the request; send each image as a file part "
                "(Photofield uses the field name 'image')",
            )
        yield parts
    finally:
        await form.close()


async def image_embeddings(request: Request) -> Response:
    state = server_state(request)
    model = _model(request, "visual")
    async with read_file_parts(request) as parts:
        model.batcher.check_room(len(parts))  # refuse before decoding when overloaded
        arrays = await asyncio.gather(
            *(
                _preprocess_part(state, model.input_size, i, field, upload)
                for i, (field, upload) in enumerate(parts)
            )
        )
        names = [(field, upload.filename) for field, upload in parts]
    try:
        outputs = await _unless_disconnected(request, model.batcher.submit_many(arrays))
    except _ClientDisconnected:
        return Response(status_code=499)
    images = [
        {"field": field, "filename": filename, **_embedding_fields(output)}
        for (field, filename), output in zip(names, outputs, strict=True)
    ]
    return JSONResponse({"images": images})


def _parse_texts(body: bytes, limit: int) -> list[str]:
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, 'request body must be a JSON object like {"texts": ["..."]}')
    if "texts" not in payload:
        raise ApiError(400, 'missing "texts": send {"texts": ["..."]}')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise ApiError(400, f'"texts" must be a list of strings, not {type(texts).__name__}')
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, f'"texts"[{i}] must be a string, not {type(text).__name__}')
    if len(texts) > limit:
        raise ApiError(413, f"{len(texts)} texts in one request, more than the limit of {limit}")
    return texts


async def text_embeddings(request: Request) -> Response:
    state = server_state(request)
    model = _model(request, "textual")
    texts = _parse_texts(await request.body(), state.settings.max_texts_per_request)
    if not texts:
        return JSONResponse({"texts": []})
    started = time.perf_counter()
    size = model.input_size
    tokens = await anyio.to_thread.run_sync(
        lambda: [state.tokenizer.tokenize(text, size) for text in texts],
        limiter=state.tokenize_limiter,
    )
    state.metrics.preprocess.labels("text").observe((time.perf_counter() - started) / len(texts))
    try:
        outputs = await _unless_disconnected(request, model.batcher.submit_many(tokens))
    except _ClientDisconnected:
        return Response(status_code=499)
    return JSONResponse(
        {
            "texts": [
                {"text": text, **_embedding_fields(output)}
                for text, output in zip(texts, outputs, strict=True)
            ]
        }
    )


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state = server_state(request)
    if state.ready and not state.draining:
        return JSONResponse({"status": "ready"})
    reason = "shutting down" if state.draining else "models are loading"
    return JSONResponse({"status": "not ready", "error": reason}, status_code=503)


async def metrics(request: Request) -> Response:
    body, content_type = server_state(request).metrics.exposition()
    return Response(body, media_type=content_type)
