"""Opt-in: the real clip-variants ViT-B/32 files reproduce the original README's embeddings.

Real weights cannot be downloaded where CI runs, so this is skipped unless
PHOTOFIELD_AI_TEST_REAL_MODELS names a directory holding clip-vit-base-patch32-visual-float16.onnx
and clip-vit-base-patch32-textual-float16.onnx (e.g. after `photofield-ai download`).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from photofield_ai.clip.preprocess import preprocess_image
from photofield_ai.clip.tokenizer import ClipTokenizer
from photofield_ai.clip.wire import decode_embedding, encode_embedding
from photofield_ai.runtime import available_providers
from photofield_ai.serving.loading import load_embedding_model

DATA = Path(__file__).parent / "data"
REAL = os.environ.get("PHOTOFIELD_AI_TEST_REAL_MODELS")

pytestmark = pytest.mark.skipif(not REAL, reason="set PHOTOFIELD_AI_TEST_REAL_MODELS=DIR")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, object]]:
    examples = json.loads((DATA / "seed-wire-examples.json").read_text())["examples"]
    return {e["kind"]: e for e in examples}


def test_heavy_industry_image(golden: dict[str, dict[str, object]]) -> None:
    assert REAL
    session = load_embedding_model(
        Path(REAL) / "clip-vit-base-patch32-visual-float16.onnx", available_providers(), "visual"
    )
    data = (DATA / "heavy-industry.jpg").read_bytes()
    output = session.run(preprocess_image(data, session.encoder.spec.input_size)[None])[0]
    expected = decode_embedding(str(golden["image"]["embedding_f16_b64"]))
    similarity = cosine(output, expected)
    print(f"heavy-industry.jpg cosine to the README embedding: {similarity:.4f}")
    assert similarity >= 0.99
    # The original README's integer: the norm taken in float16, as the original did.
    assert encode_embedding(output).embedding_inv_norm_f16_uint16 == 11922


def test_hawk_text(golden: dict[str, dict[str, object]]) -> None:
    assert REAL
    session = load_embedding_model(
        Path(REAL) / "clip-vit-base-patch32-textual-float16.onnx", available_providers(), "textual"
    )
    tokens = ClipTokenizer.from_package().tokenize("hawk")
    output = session.run(tokens[None])[0]
    expected = decode_embedding(str(golden["text"]["embedding_f16_b64"]))
    similarity = cosine(output, expected)
    print(f"'hawk' cosine to the README embedding: {similarity:.4f}")
    assert similarity >= 0.99
    assert encode_embedding(output).embedding_inv_norm_f16_uint16 == 11810
