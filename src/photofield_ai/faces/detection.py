"""RetinaFace (MobileNet-v2, as in the uniface weights) input and output handling.

The detector sees the photo letterboxed into a 640×640 square (top-left, zero padding) as BGR
minus the per-channel means; its outputs are offsets relative to a fixed grid of prior boxes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image

INPUT_SIZE = 640
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
NMS_IOU = 0.4

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Letterbox:
    """How the photo sits in the detector input: scaled by `scale`, at the top-left corner."""

    scale: float
    width: int  # of the scaled photo inside the square
    height: int


def letterbox_geometry(width: int, height: int, size: int = INPUT_SIZE) -> Letterbox:
    scale = size / max(width, height)
    return Letterbox(scale, max(1, round(width * scale)), max(1, round(height * scale)))


def detector_input(image: Image.Image, size: int = INPUT_SIZE) -> tuple[F32, Letterbox]:
    """RGB photo → [3, size, size] float32: letterboxed with black (zero) pixels at the right and
    bottom, then BGR minus the means — the padding is black minus the mean, as in uniface."""
    box = letterbox_geometry(image.width, image.height, size)
    resized = image.resize((box.width, box.height), Image.Resampling.BILINEAR)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    canvas[: box.height, : box.width] = np.asarray(resized, dtype=np.float32)[:, :, ::-1]
    return np.ascontiguousarray((canvas - BGR_MEAN).transpose(2, 0, 1)), box


@lru_cache(maxsize=4)
def prior_boxes(size: int = INPUT_SIZE) -> F32:
    """[N, 4] prior boxes (cx, cy, w, h), normalized to the input size, in RetinaFace's order."""
    anchors: list[tuple[float, float, float, float]] = []
    for step, min_sizes in zip(STEPS, MIN_SIZES, strict=True):
        rows, cols = math.ceil(size / step), math.ceil(size / step)
        for i, j in itertools.product(range(rows), range(cols)):
            for min_size in min_sizes:
                anchors.append(
                    (
                        (j + 0.5) * step / size,
                        (i + 0.5) * step / size,
                        min_size / size,
                        min_size / size,
                    )
                )
    priors = np.array(anchors, dtype=np.float32)
    priors.setflags(write=False)
    return priors


def decode_boxes(loc: F32, priors: F32) -> F32:
    """[N, 4] offsets → [N, 4] boxes (x1, y1, x2, y2), normalized."""
    v0, v1 = VARIANCES
    centers = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
    return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)


def decode_landmarks(landmarks: F32, priors: F32) -> F32:
    """[N, 10] offsets → [N, 5, 2] points, normalized."""
    v0 = VARIANCES[0]
    points = landmarks.reshape(-1, 5, 2)
    return priors[:, None, :2] + points * v0 * priors[:, None, 2:]


def nms(boxes: F32, scores: F32, iou_threshold: float = NMS_IOU) -> list[int]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = int(order.pop(0))
        keep.append(i)
        if not order:
            break
        rest = np.array(order)
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = [int(j) for j, o in zip(rest, iou, strict=True) if o <= iou_threshold]
    return keep


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the decoded image's pixels
    score: float
    landmarks: tuple[tuple[float, float], ...]  # 5 points


def postprocess(
    loc: F32,
    conf: F32,
    landmarks: F32,
    box: Letterbox,
    image_size: tuple[int, int],
    score_threshold: float,
    max_faces: int,
    input_size: int = INPUT_SIZE,
) -> list[Detection]:
    """Raw outputs of one image → faces in the pixels of the image given to `detector_input`,
    clipped to it, best first."""
    priors = prior_boxes(input_size)
    if loc.shape[0] != priors.shape[0]:
        raise ValueError(f"detector returned {loc.shape[0]} boxes, expected {priors.shape[0]}")
    scores = conf[:, 1]
    selected = np.flatnonzero(scores > score_threshold)
    if selected.size == 0:
        return []
    to_pixels = input_size / box.scale
    boxes = decode_boxes(loc[selected], priors[selected]) * to_pixels
    points = decode_landmarks(landmarks[selected], priors[selected]) * to_pixels
    keep = nms(boxes, scores[selected])[:max_faces]
    width, height = image_size
    limit = np.array([width, height, width, height], dtype=np.float32)
    faces = []
    for i in keep:
        b = np.clip(boxes[i], 0, limit)
        p = np.clip(points[i], 0, limit[:2])
        faces.append(
            Detection(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(scores[selected][i]),
                landmarks=tuple((float(x), float(y)) for x, y in p),
            )
        )
    return faces
