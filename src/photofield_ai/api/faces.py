"""POST/HEAD /faces: face boxes, landmarks and embeddings for Photofield >= 0.24.

Photofield gives up on faces for an hour after any non-200 answer and meanwhile records zero
faces for every photo, silently. So a photo that cannot be read, or that has no faces, is
answered 200 with `"faces": []` (the reason goes to a header, the log and a metric); only a
malformed request is a 4xx.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from photofield_ai.api.errors import ApiError
from photofield_ai.api.requests import engine_of, read_file_parts, refuse_if_draining
from photofield_ai.clip.preprocess import ImageDecodeError
from photofield_ai.serving.faces import FacePipeline

log = logging.getLogger(__name__)

ERROR_HEADER = "X-Photofield-AI-Faces-Error"


def face_pipeline(request: Request) -> FacePipeline:
    refuse_if_draining(request)
    faces = engine_of(request).faces
    if faces is None:
        raise ApiError(503, "face models are not loaded on this server")
    return faces


async def head_faces(request: Request) -> Response:
    face_pipeline(request)
    return Response(status_code=200)


async def _one_image(
    request: Request,
    pipeline: FacePipeline,
    index: int,
    field: str,
    upload: UploadFile,
    problems: list[str],
) -> dict[str, Any]:
    engine = engine_of(request)
    result: dict[str, Any] = {"field": field, "filename": upload.filename, "faces": []}
    data = await upload.read()
    try:
        result["faces"] = await pipeline.find_faces(data, engine.settings.max_image_pixels)
    except ImageDecodeError as exc:
        reason = type(exc).__name__.removesuffix("Error")
        engine.metrics.face_images_unreadable.labels(reason).inc()
        problems.append(f"image {index} ({upload.filename}): {exc}")
        log.info("/faces: image %d (%s) unreadable: %s", index, upload.filename, exc)
        return result
    engine.metrics.faces_per_image.observe(len(result["faces"]))
    return result


async def faces(request: Request) -> Response:
    pipeline = face_pipeline(request)
    problems: list[str] = []
    async with read_file_parts(request) as parts:
        images = await asyncio.gather(
            *(
                _one_image(request, pipeline, i, field, upload, problems)
                for i, (field, upload) in enumerate(parts)
            )
        )
    headers = {}
    if problems:
        # Header values are latin-1 and one line: keep it plain.
        text = "; ".join(problems).encode("ascii", "replace").decode()[:1000]
        headers[ERROR_HEADER] = text.replace("\r", " ").replace("\n", " ")
    return JSONResponse({"images": images}, headers=headers)
