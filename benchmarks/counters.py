"""The server's own account of a run: per-model counters from its /metrics and its CPU time
(all threads, and the event-loop thread alone), read before and after a measurement."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import fmt_ms
from benchmarks.load import LoadResult
from photofield_ai.testing.server import ServerProcess, descendants, process_name

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of a server's /metrics, keyed by name and (sorted) labels."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def histogram_mean(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """The mean of histogram `name` over the window between two scrapes (NaN: nothing
    observed)."""
    key = tuple(sorted(labels.items()))
    total = after.get((name + "_sum", key), 0.0) - before.get((name + "_sum", key), 0.0)
    count = after.get((name + "_count", key), 0.0) - before.get((name + "_count", key), 0.0)
    return total / count if count else float("nan")


@dataclass(frozen=True)
class ServerCounters:
    """A server's own account of one model so far, from its /metrics, plus its CPU time."""

    at: float
    inference_s: float
    items: float
    batches: float
    cpu_s: float | None
    loop_cpu_s: float | None
    cache_hits: float = 0.0

    @classmethod
    def read(cls, server: ServerProcess, model: str) -> ServerCounters:
        at = time.perf_counter()
        values: dict[str, float] = {}
        cache_hits = 0.0
        for (name, labels), value in scrape(server.url).items():
            label = dict(labels)
            if label.get("model") == model:
                values[name] = value
            elif name == "photofield_ai_text_cache_lookups_total" and label.get("result") == "hit":
                cache_hits += value
        return cls(
            at,
            values.get("photofield_ai_inference_seconds_sum", 0.0),
            values.get("photofield_ai_batch_size_sum", 0.0),
            values.get("photofield_ai_batch_size_count", 0.0),
            tree_cpu_s(server.process.pid),
            http_loop_cpu_s(server.process.pid),
            cache_hits,
        )

    def since(self, before: ServerCounters) -> Activity:
        return Activity(
            inference_s=self.inference_s - before.inference_s,
            items=self.items - before.items,
            batches=self.batches - before.batches,
            cpu_s=_combine(self.cpu_s, before.cpu_s, -1),
            wall_s=self.at - before.at,
            loop_cpu_s=_combine(self.loop_cpu_s, before.loop_cpu_s, -1),
        )


@dataclass(frozen=True)
class Activity:
    """What the server did for one model between two readings."""

    inference_s: float  # seconds inside session calls (summed over concurrent calls)
    items: float
    batches: float
    cpu_s: float | None  # server process CPU seconds (user + system)
    wall_s: float
    loop_cpu_s: float | None = None  # of those, the event-loop thread's

    @property
    def busy(self) -> float:
        """Share of the wall time with a session call running (can exceed 1 when K > 1)."""
        return self.inference_s / self.wall_s if self.wall_s else 0.0

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    @property
    def mean_call_s(self) -> float:
        return self.inference_s / self.batches if self.batches else 0.0

    def combine(self, other: Activity) -> Activity:
        return Activity(
            self.inference_s + other.inference_s,
            self.items + other.items,
            self.batches + other.batches,
            _combine(self.cpu_s, other.cpu_s, 1),
            self.wall_s + other.wall_s,
            _combine(self.loop_cpu_s, other.loop_cpu_s, 1),
        )


def _combine(a: float | None, b: float | None, sign: int) -> float | None:
    """a + sign·b for CPU times that some platforms cannot read (None)."""
    return None if a is None or b is None else a + sign * b


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a server and every process it started (the multi-process server's
    supervisor, inference process and workers)."""
    times = [process_cpu_s(p) for p in (pid, *descendants(pid))]
    return None if times[0] is None else sum(t for t in times if t is not None)


def http_loop_cpu_s(pid: int) -> float | None:
    """CPU seconds of the threads that run HTTP event loops: the server's main thread, or
    every worker's (its main thread is named worker-N) in the multi-process server."""
    workers = [p for p in descendants(pid) if process_name(p).startswith("worker-")]
    if not workers:
        return process_cpu_s(pid, pid)
    times = [process_cpu_s(p, p) for p in workers]
    return sum(t for t in times if t is not None)


def inference_process_cpu_s(pid: int) -> float:
    """CPU seconds of the multi-process server's inference process (0 in-process)."""
    times = [process_cpu_s(p) for p in descendants(pid) if process_name(p) == "inference"]
    return sum(t for t in times if t is not None)


def process_cpu_s(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU seconds of a process, or of one of its threads (Linux /proc; None
    elsewhere)."""
    path = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    server: ServerProcess, model: str, run: Callable[[], LoadResult]
) -> tuple[LoadResult, Activity]:
    before = ServerCounters.read(server, model)
    result = run()
    after = ServerCounters.read(server, model)
    if after.cache_hits > before.cache_hits:
        # A measured figure is about the model path: a text answered from the cache would make
        # it a cache benchmark (benchmarks/features.py measures that, on purpose).
        raise RuntimeError(
            f"{after.cache_hits - before.cache_hits:.0f} texts were answered from the text "
            "cache during a measured run: start the server with MODEL_PATH_ONLY"
        )
    return result, after.since(before)


def result_row(label: str, batching: str, r: LoadResult, a: Activity) -> list[str]:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"
    return [
        label,
        str(r.concurrency),
        batching,
        f"{r.requests_per_s:.1f}",
        fmt_ms(r.percentile(50)),
        fmt_ms(r.percentile(90)),
        fmt_ms(r.percentile(99)),
        f"{a.mean_batch:.1f}",
        f"{100 * a.busy:.0f} %",
        errors,
    ]
