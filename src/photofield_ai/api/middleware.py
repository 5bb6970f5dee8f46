"""ASGI middleware: path normalization, the body-size limit and per-endpoint HTTP metrics."""

from __future__ import annotations

import asyncio
import json
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from photofield_ai.api.errors import BodyTooLargeError, error_payload
from photofield_ai.metrics import Metrics
from photofield_ai.serving.activity import RequestsInFlight

_SLASHES = re.compile(r"/{2,}")


class CollapseSlashes:
    """`//image-embeddings` is what a client configured with a trailing slash on the host sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = dict(scope)
            scope["path"] = _SLASHES.sub("/", scope["path"])
            scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)


async def send_error(
    send: Send,
    scope: Scope,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error answered from middleware, before any app code ran; the connection is closed
    (the body may be left unread)."""
    body = json.dumps(error_payload(scope["path"], status, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Before answering 413, read and discard up to this much more of the body (never kept in
# memory): clients that send the whole body before reading the response (most do) then get the
# 413 instead of a connection reset. Past this, the connection is answered and closed at once.
_DISCARD_BYTES = 32 * 1024 * 1024
_DISCARD_SECONDS = 5.0


async def _discard_body(receive: Receive) -> None:
    discarded = 0
    deadline = time.monotonic() + _DISCARD_SECONDS
    while discarded < _DISCARD_BYTES and (remaining := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return
        if msg["type"] != "http.request":
            return
        discarded += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


class LimitBodySize:
    """Refuse bodies over the limit with 413 while streaming, before buffering them whole.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body is
    counted as it arrives and cut off once it passes the limit.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.max_bytes)
        message = f"request body is larger than the limit of {max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, scope, 400, "invalid Content-Length header")
                    return
                if declared > max_bytes:
                    if declared - max_bytes <= _DISCARD_BYTES:
                        await _discard_body(receive)
                    await send_error(send, scope, 413, message)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > max_bytes:
                    if msg.get("more_body", False):
                        await _discard_body(receive)
                    raise BodyTooLargeError(413, message)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await send_error(send, scope, 413, message)


class RecordHttpMetrics:
    """Requests by endpoint, method and status, their latency, and those in flight. Unknown paths
    share one label so that scanners cannot blow up the metric's cardinality."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        endpoints: frozenset[str],
        in_flight: RequestsInFlight | None = None,
        uncounted: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints
        # The count the engine asks before a lone call holds the event loop or takes every core.
        self.in_flight = in_flight or RequestsInFlight()
        # Paths left out of that count (probes, scrapes: they never wait on a model, and a
        # liveness probe or a scraper should not change how a lone request runs). The HTTP
        # metric still counts them.
        self.uncounted = uncounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        method = scope["method"]
        status = 500
        started = time.perf_counter()

        async def recording_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        counted = scope["path"] not in self.uncounted
        self.metrics.http_in_flight.inc()
        if counted:
            self.in_flight.started()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            if counted:
                self.in_flight.finished()
            self.metrics.http_in_flight.dec()
            self.metrics.http_requests.labels(endpoint, method, str(status)).inc()
            self.metrics.http_latency.labels(endpoint, method).observe(
                time.perf_counter() - started
            )
