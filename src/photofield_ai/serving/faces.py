"""The /faces pipeline over two queues: decode → detector batch → align → recognizer batch.

The face knowledge itself (RetinaFace priors and decoding, ArcFace alignment) is pure and lives in
`faces/`; this module runs it on the decode threads and the two models' batchers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from photofield_ai.batcher import ModelQueue
from photofield_ai.clip.wire import encode_embedding
from photofield_ai.faces.alignment import align_face, l2_normalize, recognizer_input
from photofield_ai.faces.detection import Detection, Letterbox, detector_input, postprocess
from photofield_ai.faces.image import WorkingImage, decode_for_faces
from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.runtime import OnnxSession
from photofield_ai.serving.loading import detector_output_roles

# Detection needs 640 px; alignment crops faces from this larger working copy so that small
# faces in big photos keep their detail.
WORKING_LONG_SIDE = 1280
T = TypeVar("T")


def detector_runner(detector: OnnxSession) -> Callable[[np.ndarray], np.ndarray]:
    """The detector's three outputs as one [B, N, 16] array (loc | conf | landmarks), the one
    array per batch the batcher hands back row by row."""
    roles = detector_output_roles(detector)

    def run(batch: np.ndarray) -> np.ndarray:
        outputs = detector.run(batch)
        return np.concatenate(
            [outputs[roles[4]], outputs[roles[2]], outputs[roles[10]]], axis=-1
        ).astype(np.float32)

    return run


def recognizer_runner(recognizer: OnnxSession) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        return recognizer.run(batch)[0]

    return run


def _prepare(data: bytes, limits: DecodeLimits) -> tuple[WorkingImage, np.ndarray, Letterbox]:
    working = decode_for_faces(data, limits, WORKING_LONG_SIDE)
    tensor, box = detector_input(working.image)
    return working, tensor, box


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


@dataclass
class FacePipeline:
    detector: ModelQueue  # items [3, 640, 640]; results [N, 16] = loc | conf | landmarks
    recognizer: ModelQueue  # items [3, 112, 112]; results [D] embeddings
    decode_threads: Executor
    score_threshold: float
    max_faces: int

    async def _in_decode_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.decode_threads, functools.partial(fn, *args)
        )

    def _faces_of(
        self, working: WorkingImage, raw: np.ndarray, box: Letterbox
    ) -> tuple[list[Detection], list[np.ndarray]]:
        detections = postprocess(
            raw[:, :4],
            raw[:, 4:6],
            raw[:, 6:16],
            box,
            working.image.size,
            self.score_threshold,
            self.max_faces,
        )
        crops = [
            recognizer_input(align_face(working.image, np.array(d.landmarks))) for d in detections
        ]
        return detections, crops

    async def find_faces(self, data: bytes, limits: DecodeLimits) -> list[dict[str, Any]]:
        """The faces of one photo, in the upright original's pixels, best first. Raises
        imaging.errors.ImageDecodeError for a photo that cannot be read."""
        working, tensor, box = await self._in_decode_thread(_prepare, data, limits)
        raw = await self.detector.submit(tensor)
        detections, crops = await self._in_decode_thread(self._faces_of, working, raw, box)
        if not detections:
            return []
        embeddings = await self.recognizer.submit_many(crops)
        return [
            _describe(d, working.scale, working.original_size, e)
            for d, e in zip(detections, embeddings, strict=True)
        ]
