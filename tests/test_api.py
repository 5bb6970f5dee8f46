"""The Photofield contract over real HTTP, against a real server process on tiny models."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from photofield_ai.clip.preprocess import preprocess_image
from photofield_ai.clip.tokenizer import ClipTokenizer
from photofield_ai.clip.wire import decode_embedding, encode_embedding
from photofield_ai.families import Kind
from tests.conftest import ServerProcess, clip_model, start_server
from tests.images import encode, jpeg, photo, with_orientation

CPU = ["CPUExecutionProvider"]


def assert_embedding_fields(item: dict[str, object]) -> np.ndarray:
    assert isinstance(item["embedding_f16_b64"], str)
    vector = decode_embedding(item["embedding_f16_b64"])
    assert vector.shape == (512,)
    # The server takes the norm of the model's float32 output, before rounding to float16, so
    # recomputing it from the float16 vector may differ in the last bit.
    recomputed = encode_embedding(vector).embedding_inv_norm_f16_uint16
    assert isinstance(item["embedding_inv_norm_f16_uint16"], int)
    assert abs(item["embedding_inv_norm_f16_uint16"] - recomputed) <= 1
    return vector


def assert_wire_bits(item: dict[str, object], model: Path, row: np.ndarray) -> None:
    """The answer is bit for bit what the original's rule gives for the session's output on
    the same input (a lone request runs alone: ONNX Runtime's default threads, batch of 1)."""
    kind: Kind = "visual" if row.ndim == 3 else "textual"
    output = clip_model(model, kind).run(row[None])[0]
    expected = encode_embedding(output)
    assert item["embedding_f16_b64"] == expected.embedding_f16_b64
    assert item["embedding_inv_norm_f16_uint16"] == expected.embedding_inv_norm_f16_uint16


def test_image_embedding_matches_the_model(
    server: ServerProcess, heavy_industry: bytes, tiny_float32: tuple[Path, Path]
) -> None:
    r = httpx.post(
        server.url + "/image-embeddings",
        files={"image": ("heavy-industry.jpg", heavy_industry, "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["images"] and len(body["images"]) == 1
    item = body["images"][0]
    assert list(item) == ["field", "filename", "embedding_f16_b64", "embedding_inv_norm_f16_uint16"]
    assert (item["field"], item["filename"]) == ("image", "heavy-industry.jpg")
    assert_embedding_fields(item)
    assert_wire_bits(item, tiny_float32[0], preprocess_image(heavy_industry, 224))


def test_many_images_come_back_in_request_order(server: ServerProcess) -> None:
    images = [jpeg(300 + 40 * i, 200 + 30 * i, seed=i) for i in range(5)]
    files = [(f"field{i}", (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    r = httpx.post(server.url + "/image-embeddings", files=files)
    assert r.status_code == 200, r.text
    items = r.json()["images"]
    assert [(i["field"], i["filename"]) for i in items] == [
        (f"field{i}", f"photo{i}.jpg") for i in range(5)
    ]
    vectors = [assert_embedding_fields(i) for i in items]
    for i, data in enumerate(images):  # each equals the same image sent alone
        alone = httpx.post(
            server.url + "/image-embeddings", files={"image": ("x.jpg", data, "image/jpeg")}
        ).json()["images"][0]
        np.testing.assert_allclose(
            assert_embedding_fields(alone).astype(np.float32),
            vectors[i].astype(np.float32),
            atol=2e-3,
        )


def test_text_embeddings_match_the_model(
    server: ServerProcess, tiny_float32: tuple[Path, Path]
) -> None:
    texts = ["hawk", "beach sunset", "", "cat eyes"]
    r = httpx.post(server.url + "/text-embeddings", json={"texts": texts})
    assert r.status_code == 200, r.text
    items = r.json()["texts"]
    assert [i["text"] for i in items] == texts
    assert list(items[0]) == ["text", "embedding_f16_b64", "embedding_inv_norm_f16_uint16"]
    session = clip_model(tiny_float32[1], "textual")
    tokenizer = ClipTokenizer.from_package()
    expected = session.run(np.stack([tokenizer.tokenize(t) for t in texts]))
    for item, row in zip(items, expected, strict=True):
        np.testing.assert_allclose(
            assert_embedding_fields(item).astype(np.float32), row.astype(np.float16), atol=1e-3
        )
    # One text alone: the exact bits.
    (alone,) = httpx.post(server.url + "/text-embeddings", json={"texts": ["hawk"]}).json()["texts"]
    assert_wire_bits(alone, tiny_float32[1], tokenizer.tokenize("hawk"))


def test_empty_text_list(server: ServerProcess) -> None:
    r = httpx.post(server.url + "/text-embeddings", json={"texts": []})
    assert (r.status_code, r.json()) == (200, {"texts": []})


def test_head_health_ready_openapi_metrics(server: ServerProcess) -> None:
    assert httpx.head(server.url + "/image-embeddings").status_code == 200
    assert httpx.head(server.url + "/text-embeddings").status_code == 200
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json() == {"status": "ready"}
    doc = httpx.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/image-embeddings" in doc["paths"]
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == 200 and "photofield_ai_queue_depth" in metrics.text
    assert 'photofield_ai_model_info{input_size="224"' in metrics.text


def test_doubled_slash_still_works(server: ServerProcess, heavy_industry: bytes) -> None:
    r = httpx.post(server.url + "//image-embeddings", files={"image": ("a.jpg", heavy_industry)})
    assert r.status_code == 200
    assert httpx.post(server.url + "//text-embeddings", json={"texts": ["x"]}).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"files": {}, "data": {}}, 415, "multipart/form-data"),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "multipart"),
        ({"data": {"image": "not a file"}, "files": {"dummy": ("", b"")}}, 400, "not a file"),
        (
            {
                "content": b"--xyz\r\n\r\n--xyz--\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
            },
            400,
            "",
        ),
        (
            {"files": {"image": ("bad.jpg", b"not an image at all", "image/jpeg")}},
            422,
            "filename 'bad.jpg'",
        ),
    ],
)
def test_bad_image_requests(
    server: ServerProcess, kwargs: dict[str, object], status: int, needle: str
) -> None:
    r = httpx.post(server.url + "/image-embeddings", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_no_file_parts_is_400(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/image-embeddings",
        content=b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--xyz--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 400 and "not a file" in r.json()["error"]
    empty = httpx.post(
        server.url + "/image-embeddings",
        content=b"--xyz--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert empty.status_code == 400 and "no image files" in empty.json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"[1, 2]", "JSON object"),
        (b'{"text": ["a"]}', 'missing "texts"'),
        (b'{"texts": "a"}', "must be a list"),
        (b'{"texts": ["a", 3]}', '"texts"[1] must be a string'),
        (b'{"texts": [null]}', "must be a string"),
        (b"{not json", "not valid JSON"),
        (b'{"texts": ["\xff\xfe"]}', "UTF-8"),
    ],
)
def test_bad_text_requests(server: ServerProcess, body: bytes, needle: str) -> None:
    r = httpx.post(
        server.url + "/text-embeddings", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_one_bad_image_names_its_part(server: ServerProcess, heavy_industry: bytes) -> None:
    files = [
        ("image", ("good.jpg", heavy_industry, "image/jpeg")),
        ("image", ("broken.jpg", heavy_industry[:300], "image/jpeg")),
    ]
    r = httpx.post(server.url + "/image-embeddings", files=files)
    assert r.status_code == 422
    assert "image 1 (field 'image', filename 'broken.jpg')" in r.json()["error"]
    ok = httpx.post(server.url + "/image-embeddings", files={"image": ("a.jpg", heavy_industry)})
    assert ok.status_code == 200


def test_non_jpeg_formats_over_http(server: ServerProcess) -> None:
    base = photo(200, 150)
    for fmt in ("PNG", "WEBP", "GIF", "BMP", "TIFF"):
        r = httpx.post(
            server.url + "/image-embeddings",
            files={"image": (f"x.{fmt.lower()}", encode(base, fmt))},
        )
        assert r.status_code == 200, (fmt, r.text)


@pytest.mark.parametrize(
    ("orientation", "turn"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
    ],
)
def test_exif_orientation_is_applied_before_the_model(
    server: ServerProcess, orientation: int, turn: Image.Transpose
) -> None:
    """A phone stores a photo turned and says so in EXIF: the embedding must be the upright
    photo's (same pixels up to JPEG), not the turned pixels'."""

    def embed(data: bytes) -> np.ndarray:
        r = httpx.post(server.url + "/image-embeddings", files={"image": ("p.jpg", data)})
        assert r.status_code == 200, r.text
        vector = decode_embedding(r.json()["images"][0]["embedding_f16_b64"]).astype(np.float64)
        return vector / np.linalg.norm(vector)

    upright = photo(320, 200, seed=orientation)
    stored = upright.transpose(turn)  # what the camera wrote; the EXIF tag turns it back
    want = embed(encode(upright, "JPEG", quality=95))
    got = embed(with_orientation(stored, orientation))
    ignored = embed(encode(stored, "JPEG", quality=95))  # the same pixels, tag ignored
    # (Random-weight models put every image near every other; the gap is what counts.)
    assert 1 - float(want @ got) < (1 - float(want @ ignored)) / 20, (want @ got, want @ ignored)


def test_unknown_path_and_wrong_method_are_json(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and r.json() == {"error": "not found: /nope"}
    r = httpx.get(server.url + "/image-embeddings")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]


def test_float16_models_serve(
    tmp_path: Path, tiny_float16: tuple[Path, Path], heavy_industry: bytes
) -> None:
    srv = start_server(tmp_path, *tiny_float16)
    try:
        r = httpx.post(srv.url + "/image-embeddings", files={"image": ("a.jpg", heavy_industry)})
        assert r.status_code == 200
        assert_wire_bits(
            r.json()["images"][0], tiny_float16[0], preprocess_image(heavy_industry, 224)
        )
        t = httpx.post(srv.url + "/text-embeddings", json={"texts": ["hawk"]})
        assert t.status_code == 200
        tokens = ClipTokenizer.from_package().tokenize("hawk")
        assert_wire_bits(t.json()["texts"][0], tiny_float16[1], tokens)
        assert "type tensor(float16)" in srv.log()
    finally:
        assert srv.stop() == 0
