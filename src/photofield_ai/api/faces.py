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

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from photofield_ai.api.errors import ApiError
from photofield_ai.api.routes import (
    in_decode_thread,
    read_file_parts,
    refuse_if_draining,
    server_state,
)
from photofield_ai.api.state import FacePipeline
from photofield_ai.clip.preprocess import ImageDecodeError
from photofield_ai.clip.wire import encode_embedding
from photofield_ai.faces.alignment import align_face, l2_normalize, recognizer_input
from photofield_ai.faces.detection import Detection, Letterbox, detector_input, postprocess
from photofield_ai.faces.image import WorkingImage, decode_for_faces

log = logging.getLogger(__name__)

ERROR_HEADER = "X-Photofield-AI-Faces-Error"
# Detection needs 640 px; alignment crops faces from this larger working copy so that small
# faces in big photos keep their detail.
WORKING_LONG_SIDE = 1280


def _state_faces(request: Request) -> FacePipeline:
    refuse_if_draining(request)
    faces = server_state(request).faces
    if faces is None:
        raise ApiError(503, "face models are not loaded on this server")
    return faces


async def head_faces(request: Request) -> Response:
    _state_faces(request)
    return Response(status_code=200)


def _prepare(data: bytes, max_pixels: int) -> tuple[WorkingImage, np.ndarray, Letterbox]:
    working = decode_for_faces(data, max_pixels, WORKING_LONG_SIDE)
    tensor, box = detector_input(working.image)
    return working, tensor, box


def _faces_of(
    pipeline: FacePipeline, working: WorkingImage, raw: np.ndarray, box: Letterbox
) -> tuple[list[Detection], list[np.ndarray]]:
    detections = postprocess(
        raw[:, :4],
        raw[:, 4:6],
        raw[:, 6:16],
        box,
        working.image.size,
        pipeline.score_threshold,
        pipeline.max_faces,
    )
    crops = [recognizer_input(align_face(working.image, np.array(d.landmarks))) for d in detections]
    return detections, crops


def _describe(
    d: Detection, scale: float, size: tuple[int, int], embedding: np.ndarray
) -> dict[str, Any]:
    width, height = size
    x1, y1, x2, y2 = (v / scale for v in d.box)
    encoded = encode_embedding(l2_normalize(embedding))
    return {
        "bbox": [min(x1, width), min(y1, height), min(x2, width), min(y2, height)],
        "confidence": d.score,
        "landmarks": [[min(x / scale, width), min(y / scale, height)] for x, y in d.landmarks],
        "embedding_f16_b64": encoded.embedding_f16_b64,
        "embedding_inv_norm_f16_uint16": encoded.embedding_inv_norm_f16_uint16,
    }


async def _one_image(
    request: Request,
    pipeline: FacePipeline,
    index: int,
    field: str,
    upload: UploadFile,
    problems: list[str],
) -> dict[str, Any]:
    state = server_state(request)
    result: dict[str, Any] = {"field": field, "filename": upload.filename, "faces": []}
    data = await upload.read()
    try:
        working, tensor, box = await in_decode_thread(
            state, _prepare, data, state.settings.max_image_pixels
        )
    except ImageDecodeError as exc:
        reason = type(exc).__name__.removesuffix("Error")
        state.metrics.face_images_unreadable.labels(reason).inc()
        problems.append(f"image {index} ({upload.filename}): {exc}")
        log.info("/faces: image %d (%s) unreadable: %s", index, upload.filename, exc)
        return result
    raw = await pipeline.detector.submit(tensor)
    detections, crops = await in_decode_thread(state, _faces_of, pipeline, working, raw, box)
    state.metrics.faces_per_image.observe(len(detections))
    if detections:
        embeddings = await pipeline.recognizer.submit_many(crops)
        result["faces"] = [
            _describe(d, working.scale, working.original_size, e)
            for d, e in zip(detections, embeddings, strict=True)
        ]
    return result


async def faces(request: Request) -> Response:
    pipeline = _state_faces(request)
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
