"""The HTTP server: uvicorn with the httptools parser (and uvloop where it is installed), plus
what a server facing untrusted clients needs and uvicorn leaves out, and a drain that
Photofield survives.

Why uvicorn: measured on the benchmark VM with this app and tiny models, it spent 1.8-2.0 ms of
CPU per text request where hypercorn (h11, pure Python) spent 3.1-3.2 ms, and half the
event-loop time per request (BENCHMARKS.md); it also notices a client that goes away, where
hypercorn 0.18 left every closed keep-alive socket in CLOSE-WAIT until its idle timeout.

What `GuardedHttpProtocol` adds to uvicorn's httptools protocol:
- a connection must complete its request headers within `header_timeout_s` of its first byte
  (or of connecting), else 408 and close — dripping headers cannot hold a socket forever;
- a request body must make progress at least every `body_timeout_s`, else the connection is
  closed (the handler sees the client as gone);
- request headers are capped at `MAX_HEADER_BYTES` (431 beyond);
- at most `max_connections` connections at once: beyond it a new connection gets 503 with
  `Retry-After` and is closed, so a flood of idle sockets cannot exhaust file descriptors;
- while draining, every answer carries `Connection: close`.
Idle keep-alive connections are closed after `keep_alive_s` (uvicorn's own timer).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from photofield_ai.api.transport import CoalescingTransport
from photofield_ai.config import Settings
from photofield_ai.metrics import Metrics
from photofield_ai.runtime.threads import run_event_loop

log = logging.getLogger("photofield_ai")

MAX_HEADER_BYTES = 64 * 1024
# ASGI scope extension: `scope["extensions"][ON_DISCONNECT](callback)` calls `callback` when the
# client's connection is lost (at once if it already is) and returns a function that forgets it.
ON_DISCONNECT = "photofield_ai.on_disconnect"
# File descriptors kept free for model files, the decode threads' temporary files and logs.
RESERVED_FDS = 128


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


def _plain_response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + extra
        + b"\r\n"
        + body
    )


TOO_MANY_CONNECTIONS = _plain_response(
    b"503 Service Unavailable",
    b'{"error": "too many connections; retry later"}',
    b"retry-after: 1\r\n",
)
HEADERS_TOO_SLOW = _plain_response(
    b"408 Request Timeout", b'{"error": "request headers not received in time"}'
)
HEADERS_TOO_LARGE = _plain_response(
    b"431 Request Header Fields Too Large",
    b'{"error": "request headers are larger than 65536 bytes"}',
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """One client connection. Subclassed per server by `protocol_class`, which sets the limits
    and the metrics; `draining` is shared by every connection of the server."""

    limits: ClassVar[ConnectionLimits]
    metrics: ClassVar[Metrics]
    draining: ClassVar[list[bool]]  # one flag, shared (a list so subclasses share it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._headers_too_large = False
        self._lost = False
        self._on_lost: set[Callable[[], None]] = set()
        # Every request's scope on this connection gets the same extensions.
        self._extensions: dict[str, Any] = {ON_DISCONNECT: self._call_on_disconnect}

    # -- disconnects ----------------------------------------------------------------------
    def _call_on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """The ON_DISCONNECT extension. A handler waiting on the batcher learns that its client
        left from here, instead of a second task blocked in `receive()` and an `asyncio.wait`
        over both per request (~30 µs of the event loop each time)."""
        if self._lost:
            callback()
            return _nothing
        self._on_lost.add(callback)
        return functools.partial(self._on_lost.discard, callback)

    # -- timers ---------------------------------------------------------------------------
    def _arm(self, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self, reason: str, response: bytes | None) -> None:
        self.metrics.http_connections_closed.labels(reason).inc()
        log.info("Closing a connection from %s: %s", _peer(self.client), reason.replace("_", " "))
        if response is not None and not self.transport.is_closing():
            self.transport.write(response)
        self.transport.close()

    def _headers_timed_out(self) -> None:
        self._close("header_timeout", HEADERS_TOO_SLOW)

    def _body_stalled(self) -> None:
        self._close("body_timeout", None)

    # -- uvicorn's protocol callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # A response's head and body in one write (api.transport says why).
        super().connection_made(CoalescingTransport(transport, self.loop))
        self.metrics.http_connections.inc()
        if len(self.connections) > self.limits.max_connections:
            self._close("too_many_connections", TOO_MANY_CONNECTIONS)
            return
        self._arm(self.limits.header_timeout_s, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.metrics.http_connections.dec()
        super().connection_lost(exc)
        self._lost = True
        callbacks, self._on_lost = self._on_lost, set()
        for callback in callbacks:
            callback()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._headers_too_large:
                self._close("headers_too_large", HEADERS_TOO_LARGE)
            else:
                # Malformed framing (Content-Length with Transfer-Encoding, bad chunks, ...):
                # answered and closed, so nothing smuggled behind it is ever read.
                self.metrics.http_connections_closed.labels("malformed_request").inc()
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            self.send_400_response("Upgrades are not supported.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions
        self._header_bytes = 0
        self._arm(self.limits.header_timeout_s, self._headers_timed_out)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._headers_too_large = True
            raise ValueError("request headers too large")  # aborts the parse

    def on_headers_complete(self) -> None:
        self._arm(self.limits.body_timeout_s, self._body_stalled)
        super().on_headers_complete()
        if self.draining[0]:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._arm(self.limits.body_timeout_s, self._body_stalled)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def _nothing() -> None:
    pass


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


def protocol_class(settings: Settings, metrics: Metrics) -> type[GuardedHttpProtocol]:
    """The protocol for one server, with its limits and metrics."""
    return type(
        "ServerHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "limits": ConnectionLimits(
                settings.header_timeout_s, settings.body_timeout_s, max_connections(settings)
            ),
            "metrics": metrics,
            "draining": [False],
        },
    )


def max_connections(settings: Settings) -> int:
    """The setting, or what the file-descriptor limit allows, whichever is lower. Raises the
    soft limit towards the hard one first (as servers usually do), so the default fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = settings.max_connections + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - RESERVED_FDS))


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: `serve` below decides what a signal
    means (uvicorn's re-raises the signal after shutdown, so SIGTERM would not exit 0)."""

    def capture_signals(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


@dataclass
class HttpServer:
    """A configured server for one app; `serve` runs it until it has drained."""

    app: Any
    settings: Settings
    metrics: Metrics
    draining: Callable[[], None]  # tells the app: readiness false from now on
    sockets: list[socket.socket] | None = None
    # Signal → seconds new connections are still accepted after it (None: the defaults:
    # SIGTERM waits SHUTDOWN_DELAY_S, SIGINT — Ctrl-C — none).
    signals: dict[int, float] | None = None

    def __post_init__(self) -> None:
        self.protocol = protocol_class(self.settings, self.metrics)
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            http=self.protocol,
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=int(self.settings.keep_alive_s),
            timeout_graceful_shutdown=int(self.settings.shutdown_grace_s),
        )
        self.server = _Server(config)

    @property
    def state(self) -> ServerState:
        return self.server.server_state

    def start_draining(self, delay_s: float) -> None:
        """Readiness false; every answer from now on carries `Connection: close`, so clients
        reconnect (elsewhere, once the endpoint is gone); new connections are still accepted
        for `delay_s` (load balancers take a while to notice), then the listener closes and
        running requests get the grace period to finish.

        Idle keep-alive connections are left open until then: closing one races a client that
        is sending on it at that moment, and Go's client does not retry a POST whose connection
        closed under it (for Photofield's /faces that means faces off for an hour). A client
        that uses the connection during the delay is told to close it in the answer."""
        self.draining()
        self.protocol.draining[0] = True
        asyncio.get_running_loop().call_later(delay_s, self.stop)

    def stop(self, force: bool = False) -> None:
        self.server.should_exit = True
        self.server.force_exit = self.server.force_exit or force

    def run(self) -> None:
        """Serve on a new event loop (uvloop's where installed) until drained."""
        run_event_loop(self.serve())

    async def serve(self, handle_signals: bool = True) -> None:
        if handle_signals:
            loop = asyncio.get_running_loop()
            # Ctrl-C at a terminal means "now"; SIGTERM comes from an orchestrator that is
            # still routing requests here for a moment.
            delays = self.signals or {
                signal.SIGTERM: self.settings.shutdown_delay_s,
                signal.SIGINT: 0.0,
            }
            for signum, delay in delays.items():
                loop.add_signal_handler(signum, self._on_signal, signum, delay)
        await self.server.serve(sockets=self.sockets)

    def _on_signal(self, signum: int, delay: float) -> None:
        if self.protocol.draining[0]:  # a second signal: stop now
            log.warning("Received %s again: stopping now", signal.Signals(signum).name)
            self.stop(force=True)
            return
        log.info(
            "Received %s: draining (readiness is now false; new connections accepted for "
            "%.1f s more, then running requests get %.0f s to finish)",
            signal.Signals(signum).name,
            delay,
            self.settings.shutdown_grace_s,
        )
        self.start_draining(delay)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes may bind too: the kernel spreads connections
    over the worker processes (Linux SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
