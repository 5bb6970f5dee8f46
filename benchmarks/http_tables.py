"""Sections 2 and 3 over HTTP: Photofield's pattern (one item per request) with batching on and
off, a lone request against a bare batch-1 call, and search latency while a library indexes."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import (
    Config,
    bare_model,
    fmt_ms,
    searches,
    start,
    table,
    thumbnails,
)
from benchmarks.counters import Activity, ServerCounters, measure, result_row
from benchmarks.load import LoadResult, Workload, run_interleaved, run_load, run_mixed
from photofield_ai.families import KINDS, Kind
from photofield_ai.families.base import Array
from photofield_ai.serving.loading import LoadedEmbeddingModel
from photofield_ai.testing.generate import generate
from tests.images import jpeg

# Batching on and off are measured in alternating rounds, each with its own warm-up.
HTTP_ROUNDS = 2


def http_tables(
    cfg: Config, dtype: str, image_conc: list[int], text_conc: list[int], photo_conc: list[int]
) -> tuple[list[str], dict[tuple[str, str, int], LoadResult]]:
    thumbs = thumbnails()
    photos = Workload("image", tuple(jpeg(4000, 3000, quality=90, seed=i) for i in range(3)))
    texts = searches()
    results: dict[tuple[str, str, int], LoadResult] = {}
    activity: dict[tuple[str, str, int], Activity] = {}
    modes = [("on", {}), ("off (N=1)", {"PHOTOFIELD_AI_MAX_BATCH_SIZE": "1"})]
    # Both servers run side by side (an idle one costs nothing) and each measurement is taken
    # on one, then at once on the other: drift of a shared machine hits both alike.
    servers = {mode: start(cfg, dtype, **env) for mode, env in modes}
    try:
        for label, workload, concs in (
            ("256-px JPEG", thumbs, image_conc),
            ("12-MP JPEG", photos, photo_conc),
            ("text", texts, text_conc),
        ):
            model = "textual" if workload.kind == "text" else "visual"
            for c in concs:
                for _ in range(HTTP_ROUNDS):
                    for mode, _env in modes:
                        r, a = measure(
                            servers[mode],
                            model,
                            functools.partial(
                                run_load,
                                servers[mode].url,
                                workload,
                                c,
                                cfg.warmup_s,
                                cfg.measure_s / HTTP_ROUNDS,
                                cfg.client_processes,
                            ),
                        )
                        key = (label, mode, c)
                        if key in results:
                            results[key].add_window(r)
                            activity[key] = activity[key].combine(a)
                        else:
                            results[key], activity[key] = r, a
                for mode, _env in modes:
                    r = results[(label, mode, c)]
                    print(
                        f"http {label} c={c} batching {mode}: {r.requests_per_s:.1f} req/s "
                        f"p50 {fmt_ms(r.percentile(50))} ms p99 {fmt_ms(r.percentile(99))} ms "
                        f"errors {r.errors}",
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    lines = [
        "## 2. End-to-end over HTTP (Photofield's pattern: one item per request)",
        "",
        f"Closed loop: C concurrent clients, each sending its next request when the last "
        f"returns; {cfg.measure_s:.0f} s measured after {cfg.warmup_s:.0f} s warm-up. "
        "Latencies in ms. Batching on = the shipped defaults for this device; off = "
        "`PHOTOFIELD_AI_MAX_BATCH_SIZE=1`, one session call per request like the original "
        "service. Same machine, same run, on and off measured back to back. *Mean batch* and "
        "*model busy* (share of the wall time with a session call running) come from the "
        "server's own /metrics over the run, warm-up included: a busy model with small "
        "batches means the model is the limit, an idle one that the server or the client is.",
        "",
    ]
    rows = [
        result_row(label, mode, r, activity[(label, mode, c)])
        for (label, mode, c), r in sorted(
            results.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])
        )
    ]
    lines += table(
        [
            "request",
            "C",
            "batching",
            "req/s",
            "p50",
            "p90",
            "p99",
            "mean batch",
            "model busy",
            "errors",
        ],
        rows,
    )
    return lines, results


@dataclass(frozen=True)
class LoneRequest:
    kind: str
    bare_p50_s: dict[str, float]  # one batch-1 call, by thread layout
    http: LoadResult
    activity: Activity  # the server's own: its mean model call over the same window
    bare_mean_s: dict[str, float]

    @property
    def best_layout(self) -> str:
        return min(self.bare_p50_s, key=self.bare_p50_s.__getitem__)

    @property
    def best_bare_s(self) -> float:
        return self.bare_p50_s[self.best_layout]


# (threads per call, worker threads spinning during the call): the server's two sessions of the
# adaptive layout, and every core with threads that spin while the call runs (runtime.session;
# the server does not, serving.layout says why) — the best single call is the best of the three.
BARE_LAYOUTS = {
    "1 thread": (1, False),
    "ONNX Runtime's default threads": (0, False),
    "default threads, spinning during the call": (0, True),
}


def lone_request_latency(
    cfg: Config, dtype: str, seconds: float | None = None
) -> dict[str, LoneRequest]:
    """One request at a time over HTTP against one bare batch-1 session call in each thread
    layout (the target is the best of them), for a thumbnail and for a text, paired request by
    request: each HTTP request is followed by one call of every bare layout. Paired this finely,
    drift hits both sides alike; measured in alternating blocks of 3 s the same comparison
    moved by ±10 ms from run to run, more than the 5 ms it is about (BENCHMARKS.md, "Where a
    lone request's round trip goes").

    The bare layouts take turns in every order (all permutations, one per request), so each
    follows the HTTP request and each other layout equally often: whatever one call leaves
    behind for the next (cores asleep or awake, caches) then favours no layout. Measured on
    this VM (`python -m benchmarks.lone --bare-order`), the call before changed a call's p50 by
    1-2 ms at most; a fixed order had looked like 6 ms in a first, drift-prone look."""
    if seconds is None:
        seconds = 4.0 if cfg.quick else 6.0 if cfg.gpu else 40.0
    paths = generate("vit-b-32", dtype, cfg.workdir / "models")
    server = start(cfg, dtype)
    results: dict[str, LoneRequest] = {}
    try:
        for kind, path, workload in zip(KINDS, paths, (thumbnails(), searches()), strict=True):
            sessions, x = bare_layout_sessions(path, cfg.providers, kind)
            bare: dict[str, list[float]] = {name: [] for name in sessions}
            before = ServerCounters.read(server, kind)
            orders = by_turns(sessions)
            call_each = functools.partial(_call_each_layout, sessions, orders, x, bare)
            http = run_interleaved(server.url, workload, call_each, seconds)
            activity = ServerCounters.read(server, kind).since(before)
            del sessions, call_each
            results[kind] = LoneRequest(
                kind,
                {n: float(np.percentile(v, 50)) for n, v in bare.items()},
                http,
                activity,
                {n: float(np.mean(v)) for n, v in bare.items()},
            )
            print(
                f"lone {kind} request: bare batch-1 call p50 "
                + ", ".join(f"{fmt_ms(v)} ms ({n})" for n, v in results[kind].bare_p50_s.items())
                + f"; HTTP C=1 p50 {fmt_ms(http.percentile(50))} ms ({len(http.latencies)} "
                "pairs)",
                flush=True,
            )
    finally:
        server.stop()
    return results


def bare_layout_sessions(
    path: Path, providers: list[str], kind: Kind
) -> tuple[dict[str, LoadedEmbeddingModel], Array]:
    """A session of the model in each of `BARE_LAYOUTS`, each called once (the first call
    allocates), and the batch-1 input to call them with."""
    sessions = {
        name: bare_model(path, providers, kind, threads, spin)
        for name, (threads, spin) in BARE_LAYOUTS.items()
    }
    x = next(iter(sessions.values())).encoder.example_input(1)
    for session in sessions.values():
        session.run(x)
    return sessions, x


def by_turns(names: Iterable[str]) -> Iterator[tuple[str, ...]]:
    """Every order of `names`, one after another, for ever: over each len(names)! orders each
    name is first (right after the paired HTTP request) as often as any other, and follows
    each other name as often."""
    return itertools.cycle(itertools.permutations(names))


def _call_each_layout(
    sessions: dict[str, LoadedEmbeddingModel],
    orders: Iterator[tuple[str, ...]],
    x: Array,
    times: dict[str, list[float]],
) -> None:
    for name in next(orders):
        started = time.perf_counter()
        sessions[name].run(x)
        times[name].append(time.perf_counter() - started)


def text_under_load(
    cfg: Config, dtype: str, image_concurrency: int
) -> tuple[list[str], LoadResult, LoadResult]:
    thumbs = thumbnails()
    texts = searches()
    server = start(cfg, dtype)
    try:
        idle = run_load(server.url, texts, 1, cfg.warmup_s, cfg.measure_s)
        images, busy = asyncio.run(
            run_mixed(server.url, thumbs, image_concurrency, texts, cfg.warmup_s, cfg.measure_s)
        )
    finally:
        server.stop()
    ratio = busy.percentile(99) / idle.percentile(50)
    print(
        f"text idle p50 {fmt_ms(idle.percentile(50))} ms; under load p50 "
        f"{fmt_ms(busy.percentile(50))} p99 {fmt_ms(busy.percentile(99))} ms "
        f"(p99/idle p50 = {ratio:.2f}); images {images.requests_per_s:.1f} req/s",
        flush=True,
    )
    lines = [
        "## 3. Search latency while a library indexes",
        "",
        f"One text request at a time while {image_concurrency} clients send 256-px JPEGs "
        "as fast as they can.",
        "",
    ]
    lines += table(
        ["text requests", "req/s", "p50", "p90", "p99", "errors"],
        [
            [
                "idle server",
                f"{idle.requests_per_s:.1f}",
                fmt_ms(idle.percentile(50)),
                fmt_ms(idle.percentile(90)),
                fmt_ms(idle.percentile(99)),
                str(sum(idle.errors.values())),
            ],
            [
                f"while indexing ({images.requests_per_s:.1f} images/s)",
                f"{busy.requests_per_s:.1f}",
                fmt_ms(busy.percentile(50)),
                fmt_ms(busy.percentile(90)),
                fmt_ms(busy.percentile(99)),
                str(sum(busy.errors.values())),
            ],
        ],
    )
    lines += [f"Text p99 under load / text p50 idle = **{ratio:.2f}** (target ≤ 3).", ""]
    return lines, idle, busy
