"""Batching across requests over real HTTP: same answers as one at a time, and batches > 1."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np

from photofield_ai.clip.wire import decode_embedding
from tests.conftest import ServerProcess
from tests.images import jpeg


def _batch_histogram(text: str, model: str) -> tuple[float, float]:
    def value(name: str) -> float:
        m = re.search(rf'^{name}{{model="{model}"}} (\S+)$', text, re.M)
        assert m, name
        return float(m.group(1))

    return (value("photofield_ai_batch_size_sum"), value("photofield_ai_batch_size_count"))


async def _post_images(url: str, images: list[bytes], concurrency: int) -> list[np.ndarray]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(data: bytes) -> np.ndarray:
            r = await client.post(
                url + "/image-embeddings", files={"image": ("t.jpg", data, "image/jpeg")}
            )
            assert r.status_code == 200, r.text
            return decode_embedding(r.json()["images"][0]["embedding_f16_b64"])

        return list(await asyncio.gather(*(one(d) for d in images)))


async def _post_texts(url: str, texts: list[str]) -> list[np.ndarray]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(text: str) -> np.ndarray:
            r = await client.post(url + "/text-embeddings", json={"texts": [text]})
            assert r.status_code == 200, r.text
            return decode_embedding(r.json()["texts"][0]["embedding_f16_b64"])

        return list(await asyncio.gather(*(one(t) for t in texts)))


def test_concurrent_requests_equal_sequential_ones_and_batch(server: ServerProcess) -> None:
    images = [jpeg(256, 192, seed=i) for i in range(48)]
    before = _batch_histogram(httpx.get(server.url + "/metrics").text, "visual")
    sequential = asyncio.run(_post_images(server.url, images, concurrency=1))
    after_sequential = _batch_histogram(httpx.get(server.url + "/metrics").text, "visual")
    # One at a time, every batch holds one item.
    assert after_sequential[0] - before[0] == after_sequential[1] - before[1] == 48
    concurrent = asyncio.run(_post_images(server.url, images, concurrency=48))
    after = _batch_histogram(httpx.get(server.url + "/metrics").text, "visual")
    items, batches = after[0] - after_sequential[0], after[1] - after_sequential[1]
    assert items == 48
    assert batches < 48, "concurrent single-image requests must be batched together"
    print(f"48 concurrent requests ran in {batches:.0f} batches (mean {items / batches:.1f})")
    for a, b in zip(sequential, concurrent, strict=True):
        assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= 1e-4


def test_concurrent_texts_equal_sequential_ones(server: ServerProcess) -> None:
    texts = [f"a photo of {n} dogs on a beach" for n in range(32)]
    sequential = [asyncio.run(_post_texts(server.url, [t]))[0] for t in texts]
    concurrent = asyncio.run(_post_texts(server.url, texts))
    for a, b in zip(sequential, concurrent, strict=True):
        assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= 1e-4
    text = httpx.get(server.url + "/metrics").text
    assert 'photofield_ai_items_processed_total{model="textual"}' in text
