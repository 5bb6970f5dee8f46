"""Face alignment to the ArcFace 112×112 template and the recognizer's input normalization."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

ALIGNED_SIZE = 112
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

F64 = npt.NDArray[np.float64]


def umeyama(src: F64, dst: F64) -> F64:
    """The similarity transform (rotation, uniform scale, translation) that best maps `src` onto
    `dst` in the least-squares sense (Umeyama 1991), as a 2×3 matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    variance = (src_c**2).sum() / n
    scale = (s * d).sum() / variance if variance > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image: Image.Image, landmarks: F64, size: int = ALIGNED_SIZE) -> Image.Image:
    """Warp the face whose 5 landmarks (image pixels) are given onto the ArcFace template."""
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    matrix = umeyama(np.asarray(landmarks, np.float64), template)
    # Pillow wants the inverse map: output pixel → input pixel.
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    return image.transform(
        (size, size),
        Image.Transform.AFFINE,
        tuple(inverse.ravel()),
        resample=Image.Resampling.BILINEAR,
    )


def recognizer_input(face: Image.Image) -> npt.NDArray[np.float32]:
    """Aligned RGB face → [3, 112, 112] float32 in [-1, 1]: (x − 127.5) / 127.5."""
    rgb = np.asarray(face.convert("RGB"), dtype=np.float32)
    return np.ascontiguousarray(((rgb - 127.5) / 127.5).transpose(2, 0, 1))


def l2_normalize(vector: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Photofield ignores the inverse norm and assumes unit vectors, so they must be."""
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
