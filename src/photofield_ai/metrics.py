"""Prometheus metrics: one registry per app, so several servers (and tests) never share counts.

Names follow Prometheus conventions (base units, `_total` counters, `_seconds` durations). The
queue-depth gauge is what an autoscaler reads, so it is set from the queue's real length at every
change rather than counted up and down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

NAMESPACE = "photofield_ai"
# Set (by the supervisor) when several processes serve: every process writes its metrics to
# files there and any worker's /metrics sums them (prometheus_client's multiprocess mode).
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class BatcherMetrics:
    """The metrics of one model's queue and batcher, with the `model` label already bound."""

    queue_depth: Gauge
    batch_size: Histogram
    queue_wait: Histogram
    inference: Histogram
    item_latency: Histogram
    items: Counter
    items_failed: Counter
    batches: Counter
    batches_failed: Counter
    batches_alone: Counter
    batches_on_event_loop: Counter
    items_dropped_disconnected: Counter
    items_dropped_timeout: Counter
    items_dropped_request_failed: Counter
    items_rejected: Counter
    batches_in_flight: Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, NAMESPACE
        self.queue_depth = Gauge(
            "queue_depth",
            "Items waiting in the model's queue, not yet in a batch",
            ["model"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "queue_capacity",
            "Items the model's queue holds before requests get 503 (PHOTOFIELD_AI_MAX_QUEUE)",
            ["model"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.batch_size = Histogram(
            "batch_size",
            "Items per session call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.queue_wait = Histogram(
            "queue_wait_seconds",
            "Time an item waited in the queue before its batch started",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.inference = Histogram(
            "inference_seconds",
            "Duration of one batched session call",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.item_latency = Histogram(
            "item_seconds",
            "Time from enqueue to result for one item",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.items = Counter(
            "items_processed", "Items embedded", ["model"], namespace=ns, registry=r
        )
        self.items_failed = Counter(
            "items_failed", "Items whose batch failed", ["model"], namespace=ns, registry=r
        )
        self.batches = Counter(
            "batches_processed", "Session calls that succeeded", ["model"], namespace=ns, registry=r
        )
        self.batches_failed = Counter(
            "batches_failed", "Session calls that raised", ["model"], namespace=ns, registry=r
        )
        self.batches_alone = Counter(
            "batches_alone",
            "Session calls made with the model's every-core layout (nothing else running)",
            ["model"],
            namespace=ns,
            registry=r,
        )
        self.batches_on_event_loop = Counter(
            "batches_on_event_loop",
            "Session calls made on the event loop itself: a lone request, alone in the server, "
            "to a model whose lone calls take at most a few ms (no thread hops)",
            ["model"],
            namespace=ns,
            registry=r,
        )
        self.items_dropped = Counter(
            "items_dropped",
            "Queued items dropped before running",
            ["model", "reason"],
            namespace=ns,
            registry=r,
        )
        self.items_rejected = Counter(
            "items_rejected",
            "Items refused because the queue was full",
            ["model"],
            namespace=ns,
            registry=r,
        )
        self.batches_in_flight = Gauge(
            "batches_in_flight",
            "Session calls running now",
            ["model"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests answered",
            ["endpoint", "method", "status"],
            namespace=ns,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being handled now",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.http_connections = Gauge(
            "http_connections",
            "Open client connections",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.http_connections_closed = Counter(
            "http_connections_closed",
            "Connections the server closed for a client's fault: header_timeout, body_timeout, "
            "too_many_connections, headers_too_large, malformed_request",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.http_client_disconnects = Counter(
            "http_client_disconnects",
            "Requests whose client went away before the answer (not a server error)",
            ["endpoint"],
            namespace=ns,
            registry=r,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint", "method"],
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.preprocess = Histogram(
            "preprocess_seconds",
            "Decode and preprocess time of one item (image decode/resize or text tokenization)",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.images_decoded = Counter(
            "images_decoded",
            "Embedding images decoded, by where: on the event loop (small images in a worker "
            "process, or a request's one image on an idle model) or on a decode thread",
            ["where"],
            namespace=ns,
            registry=r,
        )
        self.faces_per_image = Histogram(
            "faces_per_image",
            "Faces found in one /faces image",
            buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100),
            namespace=ns,
            registry=r,
        )
        self.faces_deadline_exceeded = Counter(
            "faces_deadline_exceeded",
            "/faces images answered with no faces because the deadline came first",
            namespace=ns,
            registry=r,
        )
        self.face_images_unreadable = Counter(
            "face_images_unreadable",
            "/faces images that could not be read (answered 200 with no faces)",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.text_cache_lookups = Counter(
            "text_cache_lookups",
            "Texts looked up in the text-embedding cache, by result (hit: answered without "
            "the model)",
            ["result"],
            namespace=ns,
            registry=r,
        )
        self.text_cache_entries = Gauge(
            "text_cache_entries",
            "Text embeddings held in the cache (summed over worker processes)",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_loaded = Gauge(
            "model_loaded",
            "1 while the model's sessions are in memory; 0 once unloaded for being idle "
            "(PHOTOFIELD_AI_MODEL_IDLE_UNLOAD_S)",
            ["model"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_load = Histogram(
            "model_load_seconds",
            "Time to load the model's sessions again after an idle unload",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            namespace=ns,
            registry=r,
        )
        self.model_unloads = Counter(
            "model_unloads",
            "Times the model was unloaded for being idle",
            ["model"],
            namespace=ns,
            registry=r,
        )
        self.http_unauthorized = Counter(
            "http_unauthorized",
            "Requests refused with 401 (no or a wrong PHOTOFIELD_AI_API_KEY)",
            namespace=ns,
            registry=r,
        )
        # A gauge of 1 rather than an Info (same exposition line; Info has no multiprocess mode).
        self.model_info = Gauge(
            "model_info",
            "Loaded models (1 per model, with what it is in the labels)",
            ["input_size", "input_type", "model", "output_type", "path", "providers"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )

    def for_batcher(self, model: str) -> BatcherMetrics:
        return BatcherMetrics(
            queue_depth=self.queue_depth.labels(model),
            batch_size=self.batch_size.labels(model),
            queue_wait=self.queue_wait.labels(model),
            inference=self.inference.labels(model),
            item_latency=self.item_latency.labels(model),
            items=self.items.labels(model),
            items_failed=self.items_failed.labels(model),
            batches=self.batches.labels(model),
            batches_failed=self.batches_failed.labels(model),
            batches_alone=self.batches_alone.labels(model),
            batches_on_event_loop=self.batches_on_event_loop.labels(model),
            items_dropped_disconnected=self.items_dropped.labels(model, "client_disconnected"),
            items_dropped_timeout=self.items_dropped.labels(model, "queue_timeout"),
            items_dropped_request_failed=self.items_dropped.labels(model, "request_failed"),
            items_rejected=self.items_rejected.labels(model),
            batches_in_flight=self.batches_in_flight.labels(model),
        )

    def set_model_info(self, model: str, info: dict[str, str]) -> None:
        self.model_info.labels(model=model, **info).set(1)

    def exposition(self) -> tuple[bytes, str]:
        """This process's metrics, or every process's in multi-process mode."""
        if os.environ.get(MULTIPROCESS_DIR):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
