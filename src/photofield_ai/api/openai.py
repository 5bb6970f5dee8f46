"""OpenAI-compatible embeddings: POST /v1/embeddings and GET /v1/models.

One request may mix texts and images. The image item shapes taken are the ones multimodal
embedding clients send today:

- `{"type": "image", "image": "<data URI or base64>"}` and Jina's `{"image": "..."}`
- `{"type": "image_url", "image_url": {"url": "data:..."}}` (OpenAI's chat content part, as
  vLLM's multimodal embeddings take it) and `{"type": "input_image", "image_url": "data:..."}`
  (OpenAI's Responses API part)
- texts: a string, or `{"type": "text", "text": "..."}` / `{"text": "..."}`

Images come inline only: an http(s) URL is refused (400) — fetching URLs on a client's behalf
would let anyone who can reach this server make it request internal addresses (SSRF).

Embeddings are L2-normalized (OpenAI's are); `encoding_format: "base64"` is little-endian
float32, as OpenAI sends it. Texts ride the search priority and the text cache, images the
indexing priority and the decode budget: the same queues and limits as the Photofield
endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from photofield_ai.api.embeddings import preprocess_image, tokenize_texts
from photofield_ai.api.errors import ApiError
from photofield_ai.api.requests import (
    check_unicode,
    engine_of,
    image_model,
    parse_json,
    text_model,
    unless_disconnected,
)
from photofield_ai.families.base import Array
from photofield_ai.serving.engine import Engine

OWNER = "photofield-ai"
ENCODINGS = ("float", "base64")
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[\w.+-]+=[^;,]*)*;base64,", re.ASCII)
_MODEL_ID_NOISE = re.compile(r"[-_.]?(visual|textual)(?=$|[-_.])")
_STARTED = int(time.time())


def model_id(engine: Engine) -> str:
    """The name /v1/models lists: the model file's name without its tower, e.g.
    clip-vit-base-patch32-float32 for the clip-variants ViT-B/32 float32 files."""
    model = engine.visual or engine.textual
    if model is None:
        return engine.settings.model_family
    stem = model.spec.path.rsplit("/", 1)[-1].split("?", 1)[0]
    stem = stem.removesuffix(".onnx")
    return _MODEL_ID_NOISE.sub("", stem) or engine.settings.model_family


@dataclass(frozen=True)
class Item:
    index: int
    text: str | None = None
    image: bytes | None = None


def decode_inline_image(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a data URI or base64 string")
    head = value[:16].lower()
    if head.startswith(("http://", "https://", "file:", "ftp://")):
        raise ApiError(
            400,
            f"{where} is a URL; this server does not fetch URLs (that would let clients make it "
            "request any address): send the image inline, as a data URI "
            "(data:image/jpeg;base64,...) or base64",
            code="invalid_image_url",
        )
    payload = value
    if head.startswith("data:"):
        match = _DATA_URI.match(value)
        if match is None:
            raise ApiError(400, f"{where} is a data URI that is not base64 (data:<type>;base64,)")
        payload = value[match.end() :]
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None
    if not data:
        raise ApiError(400, f"{where} is empty")
    return data


def _image_field(item: dict[str, Any]) -> Any:
    for name in ("image", "image_url"):
        if name in item:
            value = item[name]
            return value.get("url") if isinstance(value, dict) else value
    return None


def parse_item(index: int, raw: Any) -> Item:
    where = f"input[{index}]"
    if isinstance(raw, str):
        check_unicode(raw, where)
        return Item(index, text=raw)
    if isinstance(raw, list | int):
        raise ApiError(400, f"{where}: token arrays are not supported; send the text itself")
    if not isinstance(raw, dict):
        raise ApiError(400, f"{where} must be a string or an object, not {type(raw).__name__}")
    kind = raw.get("type")
    if "type" in raw and not isinstance(kind, str):
        raise ApiError(400, f'{where}: "type" must be a string')
    image = _image_field(raw)
    if kind in ("image", "image_url", "input_image") or (kind is None and image is not None):
        if image is None:
            raise ApiError(400, f'{where} has no image: send {{"type": "image", "image": ...}}')
        return Item(index, image=decode_inline_image(image, where))
    if kind in ("text", "input_text") or (kind is None and "text" in raw):
        text = raw.get("text")
        if not isinstance(text, str):
            raise ApiError(400, f'{where}: "text" must be a string')
        check_unicode(text, where)
        return Item(index, text=text)
    raise ApiError(
        400,
        f'{where}: unknown item {kind!r}; send a string, {{"type": "text", "text": ...}} '
        'or {"type": "image", "image": "data:image/jpeg;base64,..."}',
    )


@dataclass(frozen=True)
class EmbeddingsRequest:
    items: list[Item]
    encoding: str
    model: str


def parse_request(body: bytes, engine: Engine) -> EmbeddingsRequest:
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise ApiError(400, 'request body must be a JSON object like {"input": "..."}')
    if "input" not in payload:
        raise ApiError(400, 'missing "input": a string, or a list of strings and image items')
    for name, kind in (("model", str), ("encoding_format", str), ("user", str)):
        if payload.get(name) is not None and not isinstance(payload[name], kind):
            raise ApiError(400, f'"{name}" must be a string')
    dimensions = payload.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise ApiError(400, '"dimensions" must be an integer')
    served = model_id(engine)
    model = payload.get("model") or served
    if model != served:
        raise ApiError(
            404,
            f"the model {model!r} is not served here; this server serves {served!r} "
            "(GET /v1/models)",
            code="model_not_found",
        )
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise ApiError(400, f'"encoding_format" must be "float" or "base64", not {encoding!r}')
    raw = payload["input"]
    if isinstance(raw, list) and raw and all(isinstance(v, int) for v in raw):
        raise ApiError(400, "token arrays are not supported; send the text itself")
    raw_items = raw if isinstance(raw, list) else [raw]
    if not raw_items:
        raise ApiError(400, '"input" must not be empty')
    settings = engine.settings
    limit = settings.max_texts_per_request + settings.max_images_per_request
    if len(raw_items) > limit:
        raise ApiError(
            413, f"{len(raw_items)} inputs in one request, more than the limit of {limit}"
        )
    items = [parse_item(i, value) for i, value in enumerate(raw_items)]
    texts = sum(item.text is not None for item in items)
    images = len(items) - texts
    for count, what, most in (
        (texts, "texts", settings.max_texts_per_request),
        (images, "images", settings.max_images_per_request),
    ):
        if count > most:
            raise ApiError(413, f"{count} {what} in one request, more than the limit of {most}")
    served_model = engine.textual or engine.visual
    dim = served_model.spec.output_dim if served_model is not None else None
    if dimensions is not None and dimensions != dim:
        raise ApiError(
            400,
            f'"dimensions": this model\'s embeddings have {dim} dimensions; they cannot be '
            "shortened",
        )
    return EmbeddingsRequest(items, encoding, served)


def encode_vector(row: Array, encoding: str) -> list[float] | str:
    vector = np.asarray(row, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if norm > 0:
        vector = vector / np.float32(norm)
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    values: list[float] = vector.tolist()
    return values


def token_count(tokens: Array) -> int:
    """Tokens the model read for one text (start and end included, padding not)."""
    ids = np.asarray(tokens).reshape(-1)
    nonzero = np.flatnonzero(ids)
    return int(nonzero[-1]) + 1 if nonzero.size else 0


async def embeddings(request: Request) -> Response:
    engine = engine_of(request)
    parsed = parse_request(await request.body(), engine)
    texts = [item for item in parsed.items if item.text is not None]
    images = [item for item in parsed.items if item.image is not None]
    text = text_model(request) if texts else None
    visual = image_model(request) if images else None
    tokens: list[Array] = []
    if text is not None:
        tokens = await tokenize_texts(request, text, [item.text or "" for item in texts])
    work: list[asyncio.Future[list[Array]]] = []
    try:
        if visual is not None:
            visual.batcher.check_room(len(images))  # refuse before decoding when overloaded
            alone = len(images) == 1 and visual.batcher.idle
            with visual.batcher.preparing(len(images)):
                arrays = await asyncio.gather(
                    *(
                        preprocess_image(
                            request,
                            visual.encoder,
                            item.image or b"",
                            f"input[{item.index}]",
                            alone,
                        )
                        for item in images
                    )
                )
                work.append(asyncio.ensure_future(visual.embed(arrays)))
        if text is not None:
            work.append(asyncio.ensure_future(text.embed(tokens)))
    except BaseException:
        for queued in work:  # one part refused: the other part must not run for nobody
            queued.cancel()
        raise
    results = await unless_disconnected(request, asyncio.gather(*work))
    rows: dict[int, Array] = {}
    groups = [group for group in (images, texts) if group]
    for group, outputs in zip(groups, results, strict=True):
        for item, output in zip(group, outputs, strict=True):
            rows[item.index] = output
    prompt_tokens = sum(token_count(t) for t in tokens)
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(rows[i], parsed.encoding)}
        for i in range(len(parsed.items))
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": parsed.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


async def models(request: Request) -> Response:
    engine = engine_of(request)
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": model_id(engine), "object": "model", "created": _STARTED, "owned_by": OWNER}
            ],
        }
    )
