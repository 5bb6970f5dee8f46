"""The Photofield contract: POST/HEAD /image-embeddings and /text-embeddings.

Handlers parse and validate, run the family's pre-step (decode, tokenize) in worker threads
(never on the event loop), submit items to the model's batcher and encode the results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from photofield_ai.api.errors import ApiError
from photofield_ai.api.multipart import FilePart
from photofield_ai.api.requests import (
    check_unicode,
    describe_part,
    embedding_fields,
    engine_of,
    image_model,
    in_decode_thread,
    parse_json,
    read_file_parts,
    text_model,
    unless_disconnected,
)
from photofield_ai.families import ImageEncoder, TextEncoder
from photofield_ai.families.base import Array
from photofield_ai.imaging.decode import declared_pixels
from photofield_ai.imaging.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageFormatError,
)
from photofield_ai.serving.engine import ServedEmbeddingModel
from photofield_ai.serving.layout import INLINE_DECODE_PIXELS, INLINE_TOKENIZE_CHARS


async def head_image_embeddings(request: Request) -> Response:
    image_model(request)
    return Response(status_code=200)


async def head_text_embeddings(request: Request) -> Response:
    text_model(request)
    return Response(status_code=200)


def image_error_status(exc: ImageDecodeError) -> int:
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, UnsupportedImageFormatError):
        return 415
    return 422


async def preprocess_image(
    request: Request, encoder: ImageEncoder, data: bytes, where: str, alone: bool = False
) -> Array:
    """Image bytes → one model input row, decoded off the event loop — a small image inline
    in a multi-worker server, or when it is `alone` (serving.layout.decode_inline says why);
    a bad image is the client's 4xx, naming `where` it was."""
    engine = engine_of(request)
    started = time.perf_counter()
    try:
        if (engine.decode_inline or alone) and (declared_pixels(data) or 0) <= INLINE_DECODE_PIXELS:
            engine.metrics.images_decoded.labels("event_loop").inc()
            array = encoder.preprocess(data, engine.decode_limits)
        else:
            engine.metrics.images_decoded.labels("thread").inc()
            array = await in_decode_thread(request, encoder.preprocess, data, engine.decode_limits)
    except ImageDecodeError as exc:
        raise ApiError(image_error_status(exc), f"{where}: {exc}") from None
    engine.metrics.preprocess.labels("image").observe(time.perf_counter() - started)
    return array


def _preprocess_part(
    request: Request, encoder: ImageEncoder, index: int, part: FilePart, alone: bool
) -> Awaitable[Array]:
    where = describe_part(index, part.field, part.filename)
    return preprocess_image(request, encoder, part.data, where, alone)


async def image_embeddings(request: Request) -> Response:
    model = image_model(request)
    parts = await read_file_parts(request)
    model.batcher.check_room(len(parts))  # refuse before decoding when overloaded
    alone = len(parts) == 1 and model.batcher.idle
    with model.batcher.preparing(len(parts)):
        if len(parts) == 1:  # Photofield's thumbnail: awaited here, no task and no gather
            arrays = [await _preprocess_part(request, model.encoder, 0, parts[0], alone)]
        else:
            arrays = await asyncio.gather(
                *(
                    _preprocess_part(request, model.encoder, i, part, alone)
                    for i, part in enumerate(parts)
                )
            )
        work = model.batcher.submit_many(arrays)  # queued before the batcher stops waiting
    outputs = await unless_disconnected(request, work)
    images = [
        {"field": part.field, "filename": part.filename, **embedding_fields(output)}
        for part, output in zip(parts, outputs, strict=True)
    ]
    return JSONResponse({"images": images})


def parse_texts(body: bytes, limit: int) -> list[str]:
    payload = parse_json(body)
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
        check_unicode(text, f'"texts"[{i}]')
    if len(texts) > limit:
        raise ApiError(413, f"{len(texts)} texts in one request, more than the limit of {limit}")
    return texts


async def tokenize_texts(
    request: Request, model: ServedEmbeddingModel[TextEncoder], texts: list[str]
) -> list[Array]:
    engine = engine_of(request)
    started = time.perf_counter()
    if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
        # A search: a few words, tokenized here in well under a millisecond (no thread hop,
        # and never queued behind someone's megabyte of text).
        tokens = [model.encoder.tokenize(text) for text in texts]
    else:
        tokens = await anyio.to_thread.run_sync(
            lambda: [model.encoder.tokenize(text) for text in texts],
            limiter=engine.tokenize_limiter,
        )
    engine.metrics.preprocess.labels("text").observe((time.perf_counter() - started) / len(texts))
    return tokens


async def text_embeddings(request: Request) -> Response:
    engine = engine_of(request)
    model = text_model(request)
    texts = parse_texts(await request.body(), engine.settings.max_texts_per_request)
    if not texts:
        return JSONResponse({"texts": []})
    tokens = await tokenize_texts(request, model, texts)
    outputs = await unless_disconnected(request, model.embed(tokens))
    return JSONResponse(
        {
            "texts": [
                {"text": text, **embedding_fields(output)}
                for text, output in zip(texts, outputs, strict=True)
            ]
        }
    )
