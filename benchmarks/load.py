"""A closed-loop HTTP load generator: C workers each send a request, wait for it, send the next.

That is Photofield's indexing pattern (a fixed pool of workers, one image per request). Latency
is measured per request; throughput over the measuring window, after a warm-up. With several
client processes the load is split across them, so one Python client never caps a fast server.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import time
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass(frozen=True)
class Workload:
    """What each request carries: image files (multipart, field `image`) or texts (JSON)."""

    kind: str  # "image" or "text"
    payloads: tuple[bytes, ...] = ()
    texts: tuple[str, ...] = ()


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
        self.latencies.extend(other.latencies)
        for status, n in other.errors.items():
            self.errors[status] = self.errors.get(status, 0) + n


async def _run_async(
    url: str, workload: Workload, concurrency: int, warmup_s: float, measure_s: float
) -> LoadResult:
    result = LoadResult(concurrency, measure_s)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + measure_s
    counter = itertools.count()
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while (now := time.perf_counter()) < stop_at:
                i = next(counter)
                if workload.kind == "image":
                    data = workload.payloads[i % len(workload.payloads)]
                    request = client.post(
                        url + "/image-embeddings", files={"image": (f"{i}.jpg", data, "image/jpeg")}
                    )
                else:
                    text = workload.texts[i % len(workload.texts)]
                    request = client.post(url + "/text-embeddings", json={"texts": [text]})
                try:
                    response = await request
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                done = time.perf_counter()
                # Everything that completes inside the window counts (steady state), whenever it
                # was sent: dropping requests sent before the window would bias against the
                # long latencies of a saturated server.
                if measure_from <= done <= stop_at:
                    if status == 200:
                        result.latencies.append(done - now)
                    else:
                        result.errors[status] = result.errors.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
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
