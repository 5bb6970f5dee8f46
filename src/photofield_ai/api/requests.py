"""Request plumbing every endpoint shares: finding the engine and a model, reading file
parts, off-loop decoding, dropping work when the client leaves, and the
embedding fields of the Photofield wire format."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from photofield_ai.api.errors import ApiError
from photofield_ai.api.multipart import FilePart, parse_file_parts
from photofield_ai.api.server import ON_DISCONNECT
from photofield_ai.clip.wire import encode_embedding
from photofield_ai.families import ImageEncoder, TextEncoder
from photofield_ai.serving.engine import Engine, ServedEmbeddingModel

T = TypeVar("T")


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def image_model(request: Request) -> ServedEmbeddingModel[ImageEncoder]:
    model = engine_of(request).visual
    if model is None:
        raise ApiError(503, "no visual model is loaded on this server")
    return model


def text_model(request: Request) -> ServedEmbeddingModel[TextEncoder]:
    model = engine_of(request).textual
    if model is None:
        raise ApiError(503, "no textual model is loaded on this server")
    return model


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, but cancel it (dropping its queued items) if the client goes away first;
    then raise ClientDisconnect, as Starlette does when the client leaves mid-body."""
    on_disconnect = request.scope.get("extensions", {}).get(ON_DISCONNECT)
    if on_disconnect is None:  # served by another ASGI server
        return await _unless_receive_says_disconnected(request, work)
    future = asyncio.ensure_future(work)
    left = False

    def client_left() -> None:
        nonlocal left
        left = True
        future.cancel()

    forget = on_disconnect(client_left)
    try:
        return await future
    except asyncio.CancelledError:
        if left:
            raise ClientDisconnect from None
        raise
    finally:
        forget()


async def _unless_receive_says_disconnected(request: Request, work: Awaitable[T]) -> T:
    """unless_disconnected by the ASGI protocol alone: a second task waits in `receive()`."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
    if work_task in done:
        return work_task.result()
    work_task.cancel()
    raise ClientDisconnect


def parse_json(body: bytes) -> Any:
    """A JSON request body, or a 400 that says what is wrong with it (never a 500: too deep,
    an integer with too many digits, bytes that are not UTF-8)."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and Python's limit on an integer's digits
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def check_unicode(text: str, where: str) -> None:
    """ "\ud800" is valid JSON but not valid Unicode: refuse it before it reaches a tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, f"{where} is not valid Unicode (it has an unpaired surrogate)"
        ) from None


def embedding_fields(vector: np.ndarray[Any, Any]) -> dict[str, Any]:
    encoded = encode_embedding(vector)
    return {
        "embedding_f16_b64": encoded.embedding_f16_b64,
        "embedding_inv_norm_f16_uint16": encoded.embedding_inv_norm_f16_uint16,
    }


async def in_decode_thread(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run image work on the decode threads (lowered with the indexing priority)."""
    return await asyncio.get_running_loop().run_in_executor(
        engine_of(request).decode_threads, functools.partial(fn, *args)
    )


def describe_part(index: int, field: str, filename: str | None) -> str:
    return f"image {index} (field {field!r}, filename {filename!r})"


async def read_file_parts(request: Request) -> list[FilePart]:
    """The request's file parts, in order (every file part is an image, whatever its field
    name). Anything else in the body is the client's mistake: 4xx."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "expected a multipart/form-data body with one or more image files, "
            f"got Content-Type {content_type or 'none'!r}",
        )
    limit = engine_of(request).settings.max_images_per_request
    parts = parse_file_parts(await request.body(), content_type, limit)
    if parts is None:
        parts = await _parse_any_multipart(request, limit)
    if not parts:
        raise ApiError(
            400,
            "no image files in the request; send each image as a file part "
            "(Photofield uses the field name 'image')",
        )
    return parts


async def _parse_any_multipart(request: Request, limit: int) -> list[FilePart]:
    """Starlette's general parser, for whatever the fast path does not take."""
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except HTTPException as exc:
        if "Too many" in str(exc.detail):
            raise ApiError(
                413, f"more than {limit} parts in one request; send at most {limit} images"
            ) from None
        raise ApiError(400, f"malformed multipart body: {exc.detail}") from None
    try:
        parts = []
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise ApiError(
                    400, f"form field {field!r} is text, not a file; send images as file parts"
                )
            parts.append(FilePart(field, value.filename, await value.read()))
        return parts
    finally:
        await form.close()
