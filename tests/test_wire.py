import json
from pathlib import Path

import numpy as np

from photofield_ai.clip.wire import decode_embedding, encode_embedding

GOLDEN = json.loads((Path(__file__).parent / "data" / "seed-wire-examples.json").read_text())


def test_golden_examples_reencode_exactly() -> None:
    assert len(GOLDEN["examples"]) == 2
    for example in GOLDEN["examples"]:
        vector = decode_embedding(example["embedding_f16_b64"])
        assert vector.shape == (512,)
        encoded = encode_embedding(vector)
        assert encoded.embedding_f16_b64 == example["embedding_f16_b64"]
        assert encoded.embedding_inv_norm_f16_uint16 == example["embedding_inv_norm_f16_uint16"]


def test_hawk_inverse_norm_is_computed_in_float16() -> None:
    hawk = decode_embedding(GOLDEN["examples"][0]["embedding_f16_b64"])
    assert encode_embedding(hawk).embedding_inv_norm_f16_uint16 == 11810
    # The same vector with its norm taken in float32 gives the off-by-one the original avoided.
    as_f32 = encode_embedding(hawk.astype(np.float32))
    assert as_f32.embedding_inv_norm_f16_uint16 == 11809
    assert as_f32.embedding_f16_b64 == GOLDEN["examples"][0]["embedding_f16_b64"]


def test_float32_output_is_written_as_float16_little_endian() -> None:
    vector = np.array([3.0, 4.0], dtype=np.float32)
    encoded = encode_embedding(vector)
    assert decode_embedding(encoded.embedding_f16_b64).tolist() == [3.0, 4.0]
    inv = np.array([encoded.embedding_inv_norm_f16_uint16], dtype=np.uint16).view(np.float16)[0]
    assert inv == np.float16(0.2)


def test_zero_vector_does_not_divide_by_zero() -> None:
    assert encode_embedding(np.zeros(4, dtype=np.float16)).embedding_inv_norm_f16_uint16 == 0


def test_inverse_norm_matches_numpy_norm_bit_for_bit() -> None:
    # The original service used np.linalg.norm; the encoder repeats its steps without its
    # dispatch. Rows of a batch (contiguous), strided views and both output dtypes.
    rng = np.random.default_rng(7)
    for dtype in (np.float16, np.float32):
        batch = (rng.standard_normal((300, 1024)) * rng.uniform(0.01, 5, (300, 1))).astype(dtype)
        for vector in [*batch[:, :512], *batch[:, ::2]]:
            expected = np.float16(1 / np.linalg.norm(vector))
            got = encode_embedding(vector).embedding_inv_norm_f16_uint16
            assert got == int(np.array(expected, dtype=np.float16).view(np.uint16))
