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

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from photofield_ai.api.errors import ApiError
from photofield_ai.api.multipart import FilePart
from photofield_ai.api.requests import engine_of, read_file_parts
from photofield_ai.imaging.errors import ImageDecodeError
from photofield_ai.serving.faces import FacePipeline

log = logging.getLogger(__name__)

ERROR_HEADER = "X-Photofield-AI-Faces-Error"


def face_pipeline(request: Request) -> FacePipeline:
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
    part: FilePart,
    problems: list[str],
    deadline: float | None,
) -> dict[str, Any]:
    engine = engine_of(request)
    result: dict[str, Any] = {"field": part.field, "filename": part.filename, "faces": []}
    remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
    try:
        result["faces"] = await asyncio.wait_for(
            pipeline.find_faces(part.data, engine.decode_limits), remaining
        )
    except TimeoutError:
        engine.metrics.faces_deadline_exceeded.inc()
        seconds = engine.settings.faces_deadline_s
        problems.append(f"image {index} ({part.filename!r}): not analysed within {seconds:g} s")
        log.warning("/faces: image %d (%r) not analysed within %g s", index, part.filename, seconds)
        return result
    except ImageDecodeError as exc:
        reason = type(exc).__name__.removesuffix("Error")
        engine.metrics.face_images_unreadable.labels(reason).inc()
        problems.append(f"image {index} ({part.filename!r}): {exc}")
        log.info("/faces: image %d (%r) unreadable: %s", index, part.filename, exc)
        return result
    engine.metrics.faces_per_image.observe(len(result["faces"]))
    return result


async def faces(request: Request) -> Response:
    pipeline = face_pipeline(request)
    # Photofield gives up after 30 s and then turns faces off for an hour: an answer in time,
    # even one with no faces for a photo, costs it far less (README "Faces").
    budget = engine_of(request).settings.faces_deadline_s
    deadline = asyncio.get_running_loop().time() + budget if budget > 0 else None
    problems: list[str] = []
    parts = await read_file_parts(request)
    images = await asyncio.gather(
        *(
            _one_image(request, pipeline, i, part, problems, deadline)
            for i, part in enumerate(parts)
        )
    )
    headers = {ERROR_HEADER: header_value("; ".join(problems))} if problems else {}
    return JSONResponse({"images": images}, headers=headers)


def header_value(text: str, limit: int = 1000) -> str:
    """A header value says anything as printable ASCII on one line: every other character
    (control characters from a filename included) becomes `?`."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
