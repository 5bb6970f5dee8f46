"""A closed-loop HTTP load generator: C workers each send a request, wait for it, send the next.

That is Photofield's indexing pattern (a fixed pool of workers, one image per request). Latency
is measured per request; throughput over the measuring window, after a warm-up. With several
client processes the load is split across them, so one Python client never caps a fast server.

The client speaks HTTP/1.1 over keep-alive connections with requests encoded once, up front:
measured on the 2-core benchmark machine, httpx spent about 3 ms of CPU per request, which the
server (sharing those cores) lost, and which would cap one client process near 300 req/s on
any machine. Here a request costs a write and a header parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Workload:
    """What each request carries: image files (multipart, field `image`) or texts (JSON)."""

    kind: str  # "image" or "text"
    payloads: tuple[bytes, ...] = ()
    texts: tuple[str, ...] = ()
    path: str = ""  # default: /image-embeddings or /text-embeddings (/faces takes images too)
    think_s: float = 0.0  # pause after each answer (a person reading search results)


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def merge(self, other: LoadResult) -> None:
        """Add a result measured over the same window (another client process)."""
        self.latencies.extend(other.latencies)
        for status, n in other.errors.items():
            self.errors[status] = self.errors.get(status, 0) + n

    def record(self, status: int, latency: float) -> None:
        """One answered request: a 200's latency, or a count of its status."""
        if status == 200:
            self.latencies.append(latency)
        else:
            self.errors[status] = self.errors.get(status, 0) + 1

    def add_window(self, other: LoadResult) -> None:
        """Add a result measured over a later window: requests and seconds add up."""
        self.merge(other)
        self.seconds += other.seconds


CRLF = b"\r\n"


def encode_requests(host: str, workload: Workload) -> list[bytes]:
    """Each distinct request of the workload as the exact bytes sent on the wire."""
    if workload.kind == "image":
        bodies = []
        for i, data in enumerate(workload.payloads):
            boundary = f"photofield-bench-{i}"
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                    f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
                ).encode()
                + data
                + f"\r\n--{boundary}--\r\n".encode()
            )
            bodies.append(
                (
                    workload.path or "/image-embeddings",
                    f"multipart/form-data; boundary={boundary}",
                    body,
                )
            )
    else:
        bodies = [
            (
                workload.path or "/text-embeddings",
                "application/json",
                json.dumps({"texts": [text]}).encode(),
            )
            for text in workload.texts
        ]
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for path, content_type, body in bodies
    ]


def _host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


class _Connection:
    """One keep-alive connection; reconnects after the server closes it or on an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        """Send one request and read the whole response; its status, or 0 on a broken
        connection."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(raw)
            head = await self.reader.readuntil(CRLF + CRLF)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            length, close = 0, False
            for line in header_lines:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            await self.reader.readexactly(length)
            if close:
                await self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            await self.close()
            return 0

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _run_async(
    url: str, workload: Workload, concurrency: int, warmup_s: float, measure_s: float
) -> LoadResult:
    result = LoadResult(concurrency, measure_s)
    host, port = _host_port(url)
    requests = encode_requests(f"{host}:{port}", workload)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + measure_s
    counter = itertools.count()

    async def worker() -> None:
        connection = _Connection(host, port)
        try:
            while (now := time.perf_counter()) < stop_at:
                status = await connection.request(requests[next(counter) % len(requests)])
                done = time.perf_counter()
                # Everything that completes inside the window counts (steady state), whenever
                # it was sent: dropping requests sent before the window would bias against the
                # long latencies of a saturated server.
                if measure_from <= done <= stop_at:
                    result.record(status, done - now)
                if workload.think_s:
                    await asyncio.sleep(workload.think_s)
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def run_interleaved(
    url: str, workload: Workload, between: Callable[[], None], seconds: float, warmup: int = 3
) -> LoadResult:
    """One request at a time, each followed by `between()` (bare session calls to compare
    with), for `seconds`: a comparison paired request by request, which a shared machine's
    drift — 10-20 % over minutes, more than a few-ms difference — hits on both sides alike.
    The first `warmup` requests are not counted."""
    return asyncio.run(_run_interleaved(url, workload, between, seconds, warmup))


async def _run_interleaved(
    url: str, workload: Workload, between: Callable[[], None], seconds: float, warmup: int
) -> LoadResult:
    host, port = _host_port(url)
    requests = encode_requests(f"{host}:{port}", workload)
    connection = _Connection(host, port)
    result = LoadResult(1, 0.0)
    try:
        for i in range(warmup):
            await connection.request(requests[i % len(requests)])
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < seconds:
            sent = time.perf_counter()
            status = await connection.request(requests[i % len(requests)])
            took = time.perf_counter() - sent
            result.seconds += took
            i += 1
            result.record(status, took)
            between()
    finally:
        await connection.close()
    return result


def _run_in_process(args: tuple[str, Workload, int, float, float]) -> LoadResult:
    return asyncio.run(_run_async(*args))


def run_load(
    url: str,
    workload: Workload,
    concurrency: int,
    warmup_s: float = 2.0,
    measure_s: float = 10.0,
    processes: int = 1,
) -> LoadResult:
    """Closed-loop load at `concurrency`, split over `processes` client processes."""
    if processes <= 1:
        return asyncio.run(_run_async(url, workload, concurrency, warmup_s, measure_s))
    shares = [
        concurrency // processes + (1 if i < concurrency % processes else 0)
        for i in range(processes)
    ]
    jobs = [(url, workload, share, warmup_s, measure_s) for share in shares if share]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_run_in_process, jobs)
    total = LoadResult(concurrency, measure_s)
    for part in parts:
        total.merge(part)
    return total


async def run_together(
    url: str, loads: list[tuple[Workload, int]], warmup_s: float, measure_s: float
) -> list[LoadResult]:
    """Several closed-loop loads at once (Photofield's thumbnails, faces and searches), one
    result each."""
    return list(
        await asyncio.gather(
            *(_run_async(url, workload, c, warmup_s, measure_s) for workload, c in loads)
        )
    )


async def run_mixed(
    url: str,
    background: Workload,
    background_concurrency: int,
    foreground: Workload,
    warmup_s: float,
    measure_s: float,
) -> tuple[LoadResult, LoadResult]:
    """Foreground requests (one at a time) while the background load runs: search during
    indexing."""
    bg, fg = await asyncio.gather(
        _run_async(url, background, background_concurrency, warmup_s, measure_s),
        _run_async(url, foreground, 1, warmup_s, measure_s),
    )
    return bg, fg
