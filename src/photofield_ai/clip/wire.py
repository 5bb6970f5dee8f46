"""The response encoding the Photofield client decodes.

Photofield stores embeddings as float16 bytes and uses a precomputed inverse norm for cosine
similarity, so both must match what the original service produced bit for bit.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class EncodedEmbedding:
    embedding_f16_b64: str
    embedding_inv_norm_f16_uint16: int


def encode_embedding(vector: npt.NDArray[np.floating]) -> EncodedEmbedding:
    """Encode one model output row as the original service did.

    The norm is computed in the output's own dtype (float16 for the default models): computing it
    in float32 gives a different last bit for some vectors (11809 instead of 11810 for "hawk"),
    and Photofield compares against stored values made the original way.
    """
    if vector.ndim != 1:
        raise ValueError(f"expected a 1-d embedding, got shape {vector.shape}")
    # np.linalg.norm's own steps for a real 1-d array, without its dispatch (a few µs a row on
    # the event loop): the same dot, so the same last bit.
    flat = vector.ravel(order="K")
    norm = np.sqrt(flat.dot(flat))
    inv_norm = np.float16(1 / norm) if norm != 0 else np.float16(0)
    data = vector.astype("<f2").tobytes()
    return EncodedEmbedding(
        embedding_f16_b64=base64.b64encode(data).decode("ascii"),
        embedding_inv_norm_f16_uint16=int(np.array(inv_norm, dtype=np.float16).view(np.uint16)),
    )


def decode_embedding(b64: str) -> npt.NDArray[np.float16]:
    """Inverse of the base64 part of `encode_embedding`; used by tests and benchmarks."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f2")
