"""Tiny ONNX stand-ins for the face models (the real weights cannot be downloaded here).

The detector ignores its input and always reports the same faces, encoded against the real
RetinaFace prior grid, so post-processing (decoding, threshold, NMS, mapping back to the photo)
is tested for real. The recognizer mean-pools each channel and projects the 3 means with a
fixed matrix: its output shows exactly which channel order and normalization it was fed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

from photofield_ai.faces.detection import VARIANCES, prior_boxes

EMBEDDING_DIM = 512
PROJECTION = np.random.default_rng(7).standard_normal((3, EMBEDDING_DIM)).astype(np.float32)


@dataclass(frozen=True)
class FakeFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in detector-input pixels (640)
    score: float

    @property
    def landmarks(self) -> list[tuple[float, float]]:
        """Five points placed like the ArcFace template inside the box."""
        x1, y1, x2, y2 = self.box
        w, h = x2 - x1, y2 - y1
        template = [(0.34, 0.46), (0.66, 0.46), (0.5, 0.64), (0.37, 0.82), (0.63, 0.82)]
        return [(x1 + fx * w, y1 + fy * h) for fx, fy in template]


# Two real faces, a duplicate of the first that NMS must remove, one below the threshold.
FACES = [
    FakeFace((100, 120, 220, 260), 0.95),
    FakeFace((104, 124, 224, 262), 0.80),  # IoU with the first > 0.4
    FakeFace((400, 300, 480, 400), 0.70),
    FakeFace((500, 40, 560, 110), 0.30),
]
EXPECTED = [FACES[0], FACES[2]]  # after threshold 0.5 and NMS 0.4, best first


def _nearest_prior(priors: np.ndarray, face: FakeFace, size: int) -> int:
    x1, y1, x2, y2 = (v / size for v in face.box)
    cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
    cost = np.abs(priors[:, 0] - cx) + np.abs(priors[:, 1] - cy) + np.abs(priors[:, 2] - w)
    return int(np.argmin(cost))


def encode_faces(faces: list[FakeFace], size: int = 640) -> tuple[np.ndarray, ...]:
    """Raw RetinaFace outputs [1, N, 4], [1, N, 2], [1, N, 10] that decode to `faces`."""
    priors = prior_boxes(size)
    n = priors.shape[0]
    loc = np.zeros((n, 4), np.float32)
    conf = np.zeros((n, 2), np.float32)
    conf[:, 0] = 1.0
    landmarks = np.zeros((n, 10), np.float32)
    v0, v1 = VARIANCES
    used: set[int] = set()
    for face in faces:
        i = _nearest_prior(priors, face, size)
        while i in used:
            i += 1
        used.add(i)
        pcx, pcy, pw, ph = priors[i]
        x1, y1, x2, y2 = (v / size for v in face.box)
        loc[i] = [
            ((x1 + x2) / 2 - pcx) / (v0 * pw),
            ((y1 + y2) / 2 - pcy) / (v0 * ph),
            math.log((x2 - x1) / pw) / v1,
            math.log((y2 - y1) / ph) / v1,
        ]
        conf[i] = [1 - face.score, face.score]
        for k, (x, y) in enumerate(face.landmarks):
            landmarks[i, 2 * k] = (x / size - pcx) / (v0 * pw)
            landmarks[i, 2 * k + 1] = (y / size - pcy) / (v0 * ph)
    return loc[None], conf[None], landmarks[None]


def write_detector(path: Path, faces: list[FakeFace] = FACES) -> Path:
    loc, conf, landmarks = encode_faces(faces)
    nodes, inits = [], []
    for name, value in (("loc", loc), ("conf", conf), ("landmarks", landmarks)):
        inits.append(numpy_helper.from_array(value, f"{name}_value"))
        nodes.append(helper.make_node("Identity", [f"{name}_value"], [name]))
    n = loc.shape[1]
    graph = helper.make_graph(
        nodes,
        "fake_retinaface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 640, 640])],
        [
            helper.make_tensor_value_info("loc", TensorProto.FLOAT, [1, n, 4]),
            helper.make_tensor_value_info("conf", TensorProto.FLOAT, [1, n, 2]),
            helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [1, n, 10]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def write_recognizer(path: Path) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "projection"], ["output"]),
        ],
        "fake_edgeface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
            numpy_helper.from_array(PROJECTION, "projection"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def expected_embedding(rgb: tuple[int, int, int]) -> np.ndarray:
    """What the fake recognizer gives for a face crop of one flat RGB color, L2-normalized."""
    means = (np.array(rgb, np.float32) - 127.5) / 127.5
    v = means @ PROJECTION
    return v / np.linalg.norm(v)


# -- a detector that looks at its input ----------------------------------------------------------
MARKER_RGB = (255, 0, 0)


def write_marker_detector(path: Path) -> Path:
    """A RetinaFace stand-in that reports a face where the photo has a pure red marker: the
    smallest anchors of the stride-8 grid score by how red their 8×8 cell is, in BGR minus the
    RetinaFace means — so a pipeline that fed RGB, or forgot the means, or letterboxed wrongly,
    finds nothing or finds it in the wrong place. Box offsets are zero: a face is its anchor
    (16 px in the 640 input, centred on the cell)."""
    size, cells = 640, 80
    n_level8, n_rest = cells * cells * 2, sum((size // s) ** 2 * 2 for s in (16, 32))
    b, g, r = (float(v) for v in (104.0, 117.0, 123.0))
    nodes = [
        helper.make_node("Split", ["input", "split3"], ["b", "g", "r"], axis=1),
        helper.make_node("Add", ["r", "r_mean"], ["r_raw"]),
        helper.make_node("Add", ["g", "g_mean"], ["g_raw"]),
        helper.make_node("Add", ["b", "b_mean"], ["b_raw"]),
        # Only pure red scores: R − G − B − 200 is +55 on the marker, −128 on grey, and −66 on
        # the marker when the means were not subtracted.
        helper.make_node("Sub", ["r_raw", "g_raw"], ["rg"]),
        helper.make_node("Sub", ["rg", "b_raw"], ["rgb"]),
        helper.make_node("Sub", ["rgb", "threshold"], ["redness"]),
        helper.make_node("AveragePool", ["redness"], ["cell"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Mul", ["cell", "gain"], ["logit"]),
        helper.make_node("Reshape", ["logit", "per_cell"], ["small"]),  # [1, 6400, 1]
        helper.make_node("Expand", ["never", "per_cell"], ["large"]),  # the 32-px anchors: no
        helper.make_node("Concat", ["small", "large"], ["pair"], axis=2),  # [1, 6400, 2]
        helper.make_node("Reshape", ["pair", "per_anchor"], ["level8"]),  # [1, 12800, 1]
        helper.make_node("Concat", ["level8", "rest"], ["logits"], axis=1),  # [1, 16800, 1]
        helper.make_node("Sigmoid", ["logits"], ["face"]),
        helper.make_node("Sub", ["one", "face"], ["background"]),
        helper.make_node("Concat", ["background", "face"], ["conf"], axis=2),
        helper.make_node("Identity", ["loc_value"], ["loc"]),
        helper.make_node("Identity", ["landmarks_value"], ["landmarks"]),
    ]
    n = n_level8 + n_rest
    inits: dict[str, np.ndarray] = {
        "split3": np.array([1, 1, 1], np.int64),
        "r_mean": np.array(r, np.float32),
        "g_mean": np.array(g, np.float32),
        "b_mean": np.array(b, np.float32),
        "threshold": np.array(200.0, np.float32),
        "gain": np.array(0.05, np.float32),
        "per_cell": np.array([1, cells * cells, 1], np.int64),
        "per_anchor": np.array([1, n_level8, 1], np.int64),
        "never": np.full((1, 1, 1), -100.0, np.float32),
        "rest": np.full((1, n_rest, 1), -100.0, np.float32),
        "one": np.array(1.0, np.float32),
        "loc_value": np.zeros((1, n, 4), np.float32),
        "landmarks_value": np.zeros((1, n, 10), np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "marker_retinaface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("loc", TensorProto.FLOAT, [1, n, 4]),
            helper.make_tensor_value_info("conf", TensorProto.FLOAT, [1, n, 2]),
            helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [1, n, 10]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def photo_with_marker(width: int, height: int, center: tuple[int, int], radius: int) -> Image.Image:
    """Grey, with a red disc whose centre is the reddest point (the detector's best cell)."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    cx, cy = center
    for r in range(radius, 0, -max(1, radius // 12)):
        # Redder towards the centre: pure red only in the middle.
        k = 1 - r / radius
        colour = (255, int(128 * (1 - k) ** 2), int(128 * (1 - k) ** 2))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    return image


def faces_env(detector: Path, recognizer: Path) -> dict[str, str]:
    """The settings that serve /faces with these two model files."""
    return {
        "PHOTOFIELD_AI_FACES_ENABLED": "1",
        "PHOTOFIELD_AI_FACE_DETECTOR_MODEL": str(detector),
        "PHOTOFIELD_AI_FACE_RECOGNIZER_MODEL": str(recognizer),
    }


def fake_faces_env(folder: Path) -> dict[str, str]:
    """`faces_env` for the fake detector and recognizer, written into `folder`."""
    return faces_env(
        write_detector(folder / "detector.onnx"), write_recognizer(folder / "recognizer.onnx")
    )
