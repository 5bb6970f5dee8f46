"""The text-embedding cache: keyed by token ids, least recently used out, a hit never queued."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from photofield_ai.families.base import Array
from photofield_ai.metrics import Metrics
from photofield_ai.serving.text_cache import TextEmbeddingCache, cache_key
from tests.conftest import ServerProcess, start_server
from tests.probes import metric


def row(*ids: int, length: int = 8) -> Array:
    out = np.zeros(length, dtype=np.int64)
    out[: len(ids)] = ids
    return out


class CountingQueue:
    """A queue that answers each row with its ids as floats and records what it was given."""

    def __init__(self) -> None:
        self.submitted: list[list[int]] = []

    def submit_many(self, rows: Sequence[Array]) -> asyncio.Future[list[Array]]:
        self.submitted.append([int(r[1]) for r in rows])
        future: asyncio.Future[list[Array]] = asyncio.get_running_loop().create_future()
        future.set_result([r.astype(np.float32) for r in rows])
        return future


def test_the_key_drops_padding_only() -> None:
    start, end, bang = 49406, 49407, 0  # CLIP: token 0 is "!", and padding is 0 too
    assert cache_key(row(start, end)) != cache_key(row(start, bang, end))
    assert cache_key(row(start, 5, end)) == cache_key(row(start, 5, end, 0, 0))
    assert cache_key(row()) == b""


def test_hits_never_reach_the_queue_and_the_oldest_goes_first() -> None:
    metrics = Metrics()
    cache = TextEmbeddingCache(2, metrics)
    queue = CountingQueue()

    async def scenario() -> None:
        a, b, c = row(1, 10, 2), row(1, 20, 2), row(1, 30, 2)
        first = await cache.submit_through(queue.submit_many, [a, b, a])
        assert queue.submitted == [[10, 20]], "the same text twice in one request runs once"
        np.testing.assert_array_equal(first[2], a.astype(np.float32))
        await cache.submit_through(queue.submit_many, [a])  # a hit: a is now the newest
        assert queue.submitted == [[10, 20]]
        await cache.submit_through(queue.submit_many, [c])  # evicts b, the least recent
        await cache.submit_through(queue.submit_many, [a, b])
        assert queue.submitted == [[10, 20], [30], [20]]

    asyncio.run(scenario())
    assert len(cache) == 2

    def lookups(result: str) -> float:
        value = metrics.registry.get_sample_value(
            "photofield_ai_text_cache_lookups_total", {"result": result}
        )
        return value or 0.0

    assert (lookups("hit"), lookups("miss")) == (2, 5)
    assert metrics.registry.get_sample_value("photofield_ai_text_cache_entries") == 2


def test_a_cached_row_is_a_copy() -> None:
    """A view into the batch's output would keep the whole batch in memory."""
    cache = TextEmbeddingCache(4)
    batch = np.ones((16, 512), dtype=np.float32)
    cache.put(b"k", batch[3])
    stored = cache.get(b"k")
    assert stored is not None and stored.base is None


def test_a_refused_request_caches_nothing() -> None:
    cache = TextEmbeddingCache(4)

    def refuse(rows: Sequence[Array]) -> asyncio.Future[list[Array]]:
        raise RuntimeError("queue full")

    async def scenario() -> None:
        with pytest.raises(RuntimeError):
            cache.submit_through(refuse, [row(1, 5, 2)])

    asyncio.run(scenario())
    assert len(cache) == 0


def _texts(url: str, texts: list[str]) -> list[dict[str, object]]:
    r = httpx.post(url + "/text-embeddings", json={"texts": texts})
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["texts"]
    return items


def test_a_repeated_search_is_answered_from_the_cache(server: ServerProcess) -> None:
    """Over HTTP: texts that tokenize alike share an entry, the answer is bit for bit the
    model's, and the textual model is not run again."""
    processed = metric(server.url, "photofield_ai_items_processed_total", model="textual")
    hits = metric(server.url, "photofield_ai_text_cache_lookups_total", result="hit")
    first = _texts(server.url, ["Sunset over the Beach"])[0]
    assert (
        metric(server.url, "photofield_ai_items_processed_total", model="textual") == processed + 1
    )
    # CLIP's tokenizer lowercases and collapses whitespace: the same token ids.
    again = _texts(server.url, ["sunset over the beach", "  SUNSET   over the beach "])
    assert metric(server.url, "photofield_ai_items_processed_total", model="textual") == (
        processed + 1
    ), "a hit ran the model"
    assert metric(server.url, "photofield_ai_text_cache_lookups_total", result="hit") == hits + 2
    for item in again:
        assert item["embedding_f16_b64"] == first["embedding_f16_b64"]
        assert item["embedding_inv_norm_f16_uint16"] == first["embedding_inv_norm_f16_uint16"]
    assert [item["text"] for item in again] == [
        "sunset over the beach",
        "  SUNSET   over the beach ",
    ]


def test_cache_off_runs_every_text(tmp_path: Path, tiny_float32: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, *tiny_float32, PHOTOFIELD_AI_TEXT_CACHE_SIZE="0")
    try:
        warm = metric(srv.url, "photofield_ai_items_processed_total", model="textual")
        for _ in range(3):
            _texts(srv.url, ["cat eyes"])
        assert metric(srv.url, "photofield_ai_items_processed_total", model="textual") == warm + 3
        assert metric(srv.url, "photofield_ai_text_cache_lookups_total", result="hit") == 0
        assert metric(srv.url, "photofield_ai_text_cache_entries") == 0
    finally:
        srv.stop()
