"""A float CLIP visual model rewritten to take uint8 pixels (runtime.graph): the same embeddings
from a quarter of the bytes, on real generated models, real JPEG decoding and a real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from photofield_ai.clip.preprocess import NORMALIZE_BIAS, NORMALIZE_SCALE, preprocess_image
from photofield_ai.clip.wire import encode_embedding
from photofield_ai.config import Settings
from photofield_ai.families import ImageEncoder
from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.runtime.graph import with_pixel_input
from photofield_ai.runtime.session import ModelLoadError, OnnxSession
from photofield_ai.serving.layout import pixel_input
from photofield_ai.serving.loading import LoadedEmbeddingModel, load_embedding_model
from tests.conftest import CPU, clip_model, start_server
from tests.images import jpeg, photo, with_orientation

SCALE = NORMALIZE_SCALE.tolist()
BIAS = NORMALIZE_BIAS.tolist()


def images() -> list[bytes]:
    """Photofield's thumbnail (enlarged), a photo (shrunk, DCT-scaled) and a rotated one."""
    return [
        jpeg(256, 192, quality=85, seed=3),
        jpeg(1200, 900),
        with_orientation(photo(192, 256, seed=5), 6),
    ]


def embed(model: LoadedEmbeddingModel, data: list[bytes]) -> np.ndarray:
    encoder = model.encoder
    assert isinstance(encoder, ImageEncoder)
    rows = np.stack([encoder.preprocess(d, DecodeLimits()) for d in data])
    return np.asarray(model.run(rows), dtype=np.float32)


def pixels_model(path: Path) -> LoadedEmbeddingModel:
    return load_embedding_model(path, CPU, "visual", pixel_input=True)


def test_a_float32_model_given_pixels_gives_bit_identical_embeddings(
    tiny_float32: tuple[Path, Path],
) -> None:
    rewritten = pixels_model(tiny_float32[0])
    plain = clip_model(tiny_float32[0], "visual")
    assert rewritten.encoder.spec.input_type == "tensor(uint8)"
    assert rewritten.session.input_shape[1:] == [224, 224, 3]
    assert plain.encoder.spec.input_type == "tensor(float)"
    assert isinstance(rewritten.encoder, ImageEncoder)
    row = rewritten.encoder.preprocess(images()[0], DecodeLimits())
    assert row.dtype == np.uint8 and row.shape == (224, 224, 3)  # no float pixels on the CPU
    # The graph does the CPU's arithmetic (× scale + bias in float32) in the same order.
    np.testing.assert_array_equal(embed(rewritten, images()), embed(plain, images()))


def test_a_float16_model_given_pixels_agrees_to_float16_precision(
    tiny_float16: tuple[Path, Path],
) -> None:
    rewritten = pixels_model(tiny_float16[0])
    plain = clip_model(tiny_float16[0], "visual")
    assert rewritten.encoder.spec.input_type == "tensor(uint8)"
    a, b = embed(rewritten, images()), embed(plain, images())
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() > 0.9999, cosines
    # Float16 rounding inside the graph vs numpy's cast: at most a few float16 steps apart.
    assert np.abs(a - b).max() <= 8 * np.finfo(np.float16).eps * np.abs(b).max()


def test_only_float_images_are_rewritten(tiny_float32: tuple[Path, Path], tmp_path: Path) -> None:
    once, twice = tmp_path / "pixels.onnx", tmp_path / "again.onnx"
    assert not with_pixel_input(tiny_float32[1], once, SCALE, BIAS), "a text model stays"
    assert not once.exists()
    assert with_pixel_input(tiny_float32[0], once, SCALE, BIAS)
    assert not with_pixel_input(once, twice, SCALE, BIAS), "already takes uint8: nothing to do"
    assert not twice.exists()
    session = ort.InferenceSession(str(once), providers=CPU)
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape) == (
        "pixels",
        "tensor(uint8)",
        ["batch", 224, 224, 3],
    )
    # A textual model asked for pixels loads as it is (only images are rewritten).
    text = load_embedding_model(tiny_float32[1], CPU, "textual", pixel_input=True)
    assert text.encoder.spec.input_type == "tensor(int32)"  # as the generated file declares


def test_a_file_that_is_not_onnx_is_a_one_line_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "visual.onnx"
    bad.write_bytes(b"not a model at all" * 100)
    with pytest.raises(ModelLoadError) as info:
        load_embedding_model(bad, CPU, "visual", pixel_input=True)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_a_rewritten_session_is_rewritten_again_after_an_idle_unload(
    tiny_float32: tuple[Path, Path],
) -> None:
    model = pixels_model(tiny_float32[0])
    session = model.session
    assert isinstance(session, OnnxSession)
    before = embed(model, images()[:1])
    assert session.unload_if_idle(0) and not session.loaded
    np.testing.assert_array_equal(embed(model, images()[:1]), before)
    assert session.loaded


def test_on_by_default_with_an_accelerator_only() -> None:
    assert pixel_input(Settings(), accelerated=True)
    assert not pixel_input(Settings(), accelerated=False)
    on = Settings.from_env({"PHOTOFIELD_AI_PIXEL_INPUT": "1"})
    off = Settings.from_env({"PHOTOFIELD_AI_PIXEL_INPUT": "0"})
    assert pixel_input(on, accelerated=False) and not pixel_input(off, accelerated=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_asked_for_pixel_input_answers_with_the_float_models_embeddings(
    tmp_path: Path, tiny_float32: tuple[Path, Path], workers: int
) -> None:
    """W=2: the inference process rewrites the model, the HTTP workers learn from its spec
    that they send uint8 pixels (through shared memory)."""
    thumbnail = images()[0]
    srv = start_server(
        tmp_path,
        *tiny_float32,
        PHOTOFIELD_AI_PIXEL_INPUT="1",
        PHOTOFIELD_AI_WORKERS=str(workers),
    )
    try:
        r = httpx.post(srv.url + "/image-embeddings", files={"image": ("t.jpg", thumbnail)})
        assert r.status_code == 200, r.text
        metrics = httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
    assert 'input_type="tensor(uint8)"' in metrics
    plain = clip_model(tiny_float32[0], "visual")
    expected = encode_embedding(plain.run(preprocess_image(thumbnail, 224)[None])[0])
    assert r.json()["images"][0]["embedding_f16_b64"] == expected.embedding_f16_b64
