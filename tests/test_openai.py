"""POST /v1/embeddings and GET /v1/models, driven by the official `openai` client against a
real server (with an access key, as a deployment that exposes this API would have)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from photofield_ai.clip.preprocess import preprocess_image
from photofield_ai.clip.tokenizer import ClipTokenizer
from tests.conftest import ServerProcess, clip_model, start_server
from tests.images import jpeg
from tests.probes import parse_metric

KEY = "test-key-0123"


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_float32: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    srv = start_server(
        tmp_path_factory.mktemp("openai"),
        *tiny_float32,
        PHOTOFIELD_AI_API_KEY=KEY,
        PHOTOFIELD_AI_MAX_IMAGES_PER_REQUEST="4",
        PHOTOFIELD_AI_MAX_TEXTS_PER_REQUEST="4",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(keyed_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEY, max_retries=0)


def normalized(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float32).reshape(-1)
    return row / np.linalg.norm(row)


def expected_text(models: tuple[Path, Path], text: str) -> np.ndarray:
    tokens = ClipTokenizer.from_package().tokenize(text, 77)
    return normalized(clip_model(models[1], "textual").run(tokens[None])[0])


def expected_image(models: tuple[Path, Path], data: bytes) -> np.ndarray:
    pixels = preprocess_image(data, 224)
    return normalized(clip_model(models[0], "visual").run(pixels[None])[0])


def mixed(items: Sequence[object]) -> Any:
    """Image items for the client, whose types only know texts and token arrays."""
    return items


def data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["clip-tiny-float32"]
    assert models[0].owned_by == "photofield-ai"


def test_texts_are_the_models_normalized_embeddings(
    client: openai.OpenAI, tiny_float32: tuple[Path, Path]
) -> None:
    texts = ["a cat on a sofa", "beach sunset"]
    r = client.embeddings.create(model="clip-tiny-float32", input=texts)
    assert [d.index for d in r.data] == [0, 1]
    for text, item in zip(texts, r.data, strict=True):
        got = np.array(item.embedding, dtype=np.float32)
        assert abs(float(np.linalg.norm(got)) - 1) < 1e-5, "embeddings are L2-normalized"
        np.testing.assert_allclose(got, expected_text(tiny_float32, text), atol=1e-6)
    # start, words, end: "a cat on a sofa" is 5 words, "beach sunset" 2
    assert r.usage.prompt_tokens == (5 + 2) + 2 * 2 == r.usage.total_tokens
    assert r.model == "clip-tiny-float32"


def test_one_string_is_one_input(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model="clip-tiny-float32", input="cat eyes")
    assert len(r.data) == 1 and len(r.data[0].embedding) == 512


@pytest.mark.parametrize(
    "shape",
    [
        lambda uri: {"type": "image", "image": uri},
        lambda uri: {"image": uri},  # Jina's
        lambda uri: {"type": "image_url", "image_url": {"url": uri}},  # OpenAI chat part
        lambda uri: {"type": "input_image", "image_url": uri},  # OpenAI Responses part
        lambda uri: {"type": "image", "image": uri.split(",", 1)[1]},  # bare base64
    ],
    ids=["image", "jina", "image_url", "input_image", "bare-base64"],
)
def test_image_items_in_every_accepted_shape(
    client: openai.OpenAI, tiny_float32: tuple[Path, Path], shape: Callable[[str], object]
) -> None:
    photo = jpeg(320, 240, seed=7)
    item = shape(data_uri(photo))
    r = client.embeddings.create(model="clip-tiny-float32", input=mixed([item]))
    got = np.array(r.data[0].embedding, dtype=np.float32)
    np.testing.assert_allclose(got, expected_image(tiny_float32, photo), atol=1e-6)


def test_mixed_input_keeps_its_order_and_base64_is_little_endian_float32(
    client: openai.OpenAI, tiny_float32: tuple[Path, Path]
) -> None:
    photo = jpeg(256, 256, seed=3)
    inputs = ["first", {"type": "image", "image": data_uri(photo)}, "third"]
    r = client.embeddings.create(
        model="clip-tiny-float32",
        input=mixed(inputs),
        encoding_format="base64",
    )
    assert [d.index for d in r.data] == [0, 1, 2]
    # Asked for base64, the client hands the string over as it came.
    vectors = [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in r.data]
    np.testing.assert_allclose(vectors[0], expected_text(tiny_float32, "first"), atol=1e-6)
    np.testing.assert_allclose(vectors[1], expected_image(tiny_float32, photo), atol=1e-6)
    np.testing.assert_allclose(vectors[2], expected_text(tiny_float32, "third"), atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (
            {"input": [{"type": "image", "image": "https://169.254.169.254/latest/meta-data"}]},
            400,
            "does not fetch URLs",
        ),
        ({"input": [{"type": "image_url", "image_url": {"url": "http://x/a.jpg"}}]}, 400, "URL"),
        ({"input": [[1, 2, 3]]}, 400, "token arrays"),
        ({"input": [1, 2, 3]}, 400, "token arrays"),
        ({"input": []}, 400, "must not be empty"),
        ({"input": [{"type": "image", "image": "not base64!"}]}, 400, "not valid base64"),
        ({"input": [{"type": "audio", "audio": "x"}]}, 400, "unknown item"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "x", "dimensions": 256}, 400, "cannot be shortened"),
        ({"input": ["a"] * 5}, 413, "5 texts"),
        ({"texts": ["x"]}, 400, 'missing "input"'),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "not served here"),
    ],
)
def test_bad_requests_get_openai_errors(
    keyed_server: ServerProcess, body: dict[str, object], status: int, needle: str
) -> None:
    r = httpx.post(
        keyed_server.url + "/v1/embeddings",
        json={"model": "clip-tiny-float32", **body},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error" and "code" in error and "param" in error


def test_the_client_raises_its_own_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not fetch URLs"):
        client.embeddings.create(
            model="clip-tiny-float32",
            input=mixed([{"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]),
        )
    with pytest.raises(openai.NotFoundError) as found:
        client.embeddings.create(model="ViT-B-32", input="x")
    assert found.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError, match="input\\[0\\]"):
        broken = data_uri(jpeg(64, 64)[:200])
        client.embeddings.create(
            model="clip-tiny-float32",
            input=mixed([{"type": "image", "image": broken}]),
        )
    wrong = openai.OpenAI(base_url=str(client.base_url), api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model="clip-tiny-float32", input="x")


def test_other_failures_on_v1_are_in_the_openai_shape(keyed_server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(keyed_server.url + "/v1/nothing", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["message"] == "not found: /v1/nothing"
    r = httpx.post(
        keyed_server.url + "/v1/embeddings",
        content=b"{not json",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(keyed_server.url + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # The Photofield endpoints keep their own shape.
    r = httpx.post(keyed_server.url + "/text-embeddings", json={}, headers=auth)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_a_refused_image_part_leaves_nothing_queued(
    keyed_server: ServerProcess, client: openai.OpenAI
) -> None:
    """A request whose image is bad is refused whole: its text is not run for nobody."""

    def processed() -> float:
        scrape = httpx.get(
            keyed_server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert scrape.status_code == 200
        return parse_metric(scrape.text, "photofield_ai_items_processed_total", model="textual")

    before = processed()
    assert before > 0  # (the tests above ran texts)
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(
            model="clip-tiny-float32",
            input=mixed(
                ["orphan text", {"type": "image", "image": data_uri(b"\xff\xd8\xff\xe0broken")}]
            ),
        )
    assert processed() == before


def test_openapi_documents_the_v1_endpoints(keyed_server: ServerProcess) -> None:
    doc = httpx.get(
        keyed_server.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    assert {"/v1/embeddings", "/v1/models"} <= set(doc["paths"])
    assert "post" in doc["paths"]["/v1/embeddings"] and "get" in doc["paths"]["/v1/models"]
