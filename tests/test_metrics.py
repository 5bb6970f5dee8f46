"""Metrics: one registry per app, names and labels as documented, per-model children bound."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from photofield_ai.metrics import Metrics
from tests.conftest import ServerProcess


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_registries_are_separate() -> None:
    a, b = Metrics(), Metrics()
    a.for_batcher("visual").items.inc(3)
    assert (
        a.registry.get_sample_value("photofield_ai_items_processed_total", {"model": "visual"}) == 3
    )
    assert (
        b.registry.get_sample_value("photofield_ai_items_processed_total", {"model": "visual"})
        is None
    )


def test_batcher_metrics_are_bound_to_their_model() -> None:
    m = Metrics()
    m.for_batcher("textual").items_dropped_timeout.inc()
    m.for_batcher("visual").items_dropped_disconnected.inc(2)
    get = m.registry.get_sample_value
    assert (
        get("photofield_ai_items_dropped_total", {"model": "textual", "reason": "queue_timeout"})
        == 1
    )
    assert (
        get(
            "photofield_ai_items_dropped_total",
            {"model": "visual", "reason": "client_disconnected"},
        )
        == 2
    )
    body, content_type = m.exposition()
    assert content_type.startswith("text/plain") and b"photofield_ai_queue_depth" in body


def test_requests_are_counted_by_endpoint_and_status(server: ServerProcess) -> None:
    def count(endpoint: str, status: str) -> float:
        text = httpx.get(server.url + "/metrics").text
        key = (
            "photofield_ai_http_requests_total",
            (("endpoint", endpoint), ("method", "POST"), ("status", status)),
        )
        return _samples(text).get(key, 0.0)

    ok, bad, other = (
        count("/text-embeddings", "200"),
        count("/text-embeddings", "400"),
        count("other", "404"),
    )
    assert httpx.post(server.url + "/text-embeddings", json={"texts": ["a"]}).status_code == 200
    assert httpx.post(server.url + "/text-embeddings", content=b"{").status_code == 400
    # Unknown paths share one label, whatever they are (no cardinality explosion).
    for path in ("/nope", "/x/y", "/image-embeddingz"):
        assert httpx.post(server.url + path).status_code == 404
    assert count("/text-embeddings", "200") == ok + 1
    assert count("/text-embeddings", "400") == bad + 1
    assert count("other", "404") == other + 3
