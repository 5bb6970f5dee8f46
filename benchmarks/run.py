"""The benchmark suite: model-only ceiling, end-to-end HTTP with batching on and off, and search
latency while a library indexes. Writes a markdown report (BENCHMARKS.md).

    make bench                      # CPU, generated ViT-B/32 models, ~16 minutes on 2 cores
    python -m benchmarks.run --gpu  # CUDA + onnxruntime-gpu, float16; sized for < 5 minutes
                                    # (an estimate: it has not run on a GPU yet)
    python -m benchmarks.run --quick --out /tmp/bench.md   # a smoke run of everything
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import os
import platform
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.load import LoadResult, Workload, run_load, run_mixed
from photofield_ai import __version__
from photofield_ai.app import ThreadLayout, thread_layout
from photofield_ai.config import Settings
from photofield_ai.runtime import ModelSession
from photofield_ai.testing.models import PRESETS, generate
from photofield_ai.testing.server import ServerProcess, start_server
from tests.images import jpeg

NOISE_NOTE = (
    "Reading these: a shared VM's speed drifts by 10-20 % within minutes, so differences "
    "smaller than that are not findings. At C=1 batching on and off run the same path (a batch "
    "of one, started at once); a difference there is drift. `python -m benchmarks.compare` "
    "repeats one comparison in interleaved rounds when a number matters."
)
# Batching on and off are measured in alternating rounds, each with its own warm-up.
HTTP_ROUNDS = 2
# Sections other commands write into the same file (benchmarks.soak; comparisons recorded with
# benchmarks.compare) and a rerun of this suite keeps.
KEPT_SECTIONS = ("compare", "soak")
TEXTS = (
    "beach sunset",
    "cat eyes",
    "a photo of a dog",
    "snow-covered mountains at dawn",
    "hawk",
    "birthday cake with candles",
    "old car in the desert",
    "city skyline at night",
)


def thumbnails() -> Workload:
    """Photofield's indexing request: one 256-px JPEG thumbnail (16 distinct ones in turn)."""
    return Workload("image", tuple(jpeg(256, 192, quality=85, seed=i) for i in range(16)))


def searches() -> Workload:
    return Workload("text", texts=TEXTS)


@dataclass(frozen=True)
class Config:
    gpu: bool
    quick: bool
    workdir: Path
    measure_s: float
    warmup_s: float
    client_processes: int

    @property
    def providers(self) -> list[str]:
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if self.gpu
            else ["CPUExecutionProvider"]
        )

    @property
    def server_env(self) -> dict[str, str]:
        if self.gpu:
            return {
                "PHOTOFIELD_AI_RUNTIME": "",
                "PHOTOFIELD_AI_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
            }
        return {"PHOTOFIELD_AI_RUNTIME": "cpu"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, IndexError):
        return None


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


# -- 1. model-only ceiling ---------------------------------------------------------------------
def measure_session(
    session: ModelSession,
    batch: int,
    min_s: float,
    warm_up: bool = True,
    min_calls: int = 2,
    streams: int = 1,
) -> float:
    """items/s of back-to-back calls on one stacked batch, from `streams` threads at once."""
    x = session.example_input(batch)
    if warm_up:
        session.run(x)  # the first call with a new shape allocates
    calls = [0] * streams
    started = time.perf_counter()

    def call_repeatedly(i: int) -> None:
        while calls[i] < min_calls or time.perf_counter() - started < min_s:
            session.run(x)
            calls[i] += 1

    if streams == 1:
        call_repeatedly(0)
    else:
        threads = [threading.Thread(target=call_repeatedly, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sum(calls) * batch / (time.perf_counter() - started)


def measure_batch_sizes(
    session: ModelSession,
    batch_sizes: list[int],
    min_s: float,
    rounds: int = 3,
    streams: int = 1,
) -> list[float]:
    """items/s per batch size, measured in `rounds` interleaved passes and averaged: this VM's
    speed drifts by 10-20 % over minutes, and one pass per size would let the drift pick the
    "best" batch size (the maximum of noisy numbers is biased upwards)."""
    items = dict.fromkeys(batch_sizes, 0.0)
    seconds = dict.fromkeys(batch_sizes, 0.0)
    for b in batch_sizes:
        session.run(session.example_input(b))  # the first call with a new shape allocates
    for _ in range(rounds):
        for b in batch_sizes:
            started = time.perf_counter()
            rate = measure_session(
                session, b, min_s / rounds, warm_up=False, min_calls=1, streams=streams
            )
            elapsed = time.perf_counter() - started
            items[b] += rate * elapsed
            seconds[b] += elapsed
    return [items[b] / seconds[b] for b in batch_sizes]


def model_ceiling(
    cfg: Config, dtypes: list[str], batch_sizes: list[int]
) -> tuple[list[str], dict[str, float]]:
    lines = [
        "## 1. Model-only ceiling (raw ONNX Runtime, items/s)",
        "",
        "One `session.run` on a stacked batch, no HTTP, no preprocessing; each batch size "
        "measured in three interleaved passes and averaged (6 s per size for the dtype the HTTP "
        "runs use, 3 s for the others). Rows without a layout: one call at a time with ONNX "
        "Runtime's default threads (one per physical core); where the server lays a model out "
        "otherwise by default, that layout has its own row. The ceiling the server's "
        "throughput is compared with is the best figure of the model and dtype, any layout.",
        "",
    ]
    ceilings: dict[str, float] = {}
    rows: list[list[str]] = []
    for dtype in dtypes:
        # The dtype the HTTP runs use is the targets' reference: measured longest.
        # (A GPU's timings are steadier, and its run has a 5-minute budget.)
        min_s = 1.0 if cfg.quick else 2.0 if cfg.gpu else 6.0 if dtype == dtypes[0] else 3.0
        visual_path, textual_path = generate("vit-b-32", dtype, cfg.workdir / "models")
        for kind, path in (("visual", visual_path), ("textual", textual_path)):
            layouts = [(kind, ThreadLayout(0, 1))]
            server_layout = thread_layout(Settings(), kind, cfg.gpu)
            if server_layout != ThreadLayout(0, 1):
                threads = server_layout.intra_op_threads or "default"
                layouts.append(
                    (
                        f"{kind}, {threads} thread(s) × {server_layout.concurrent_batches} "
                        "calls at once (the server's layout)",
                        server_layout,
                    )
                )
            for label, layout in layouts:
                session = ModelSession(
                    path, cfg.providers, intra_op_threads=layout.intra_op_threads
                )
                rates = measure_batch_sizes(
                    session, batch_sizes, min_s, streams=layout.concurrent_batches
                )
                best = max(rates)
                key = f"{kind}-{dtype}"
                ceilings[key] = max(best, ceilings.get(key, 0.0))
                best_b = batch_sizes[rates.index(best)]
                rows.append(
                    [label, dtype, *(f"{r:.1f}" for r in rates), f"**{best:.1f}** (b={best_b})"]
                )
                print(
                    f"ceiling {label} {dtype}: "
                    + ", ".join(f"b{b}={r:.1f}" for b, r in zip(batch_sizes, rates, strict=True)),
                    flush=True,
                )
                del session
    lines += table(["model", "dtype", *(f"b={b}" for b in batch_sizes), "best"], rows)
    return lines, ceilings


# -- 2. end-to-end HTTP ------------------------------------------------------------------------
def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


@dataclass(frozen=True)
class ServerCounters:
    """A server's own account of one model so far, from its /metrics, plus its CPU time."""

    at: float
    inference_s: float
    items: float
    batches: float
    cpu_s: float | None
    loop_cpu_s: float | None

    @classmethod
    def read(cls, server: ServerProcess, model: str) -> ServerCounters:
        at = time.perf_counter()
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") == model:
                    values[sample.name] = sample.value
        return cls(
            at,
            values.get("photofield_ai_inference_seconds_sum", 0.0),
            values.get("photofield_ai_batch_size_sum", 0.0),
            values.get("photofield_ai_batch_size_count", 0.0),
            process_cpu_s(server.process.pid),
            # the main thread runs the event loop (hypercorn + the handlers)
            process_cpu_s(server.process.pid, server.process.pid),
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
    return result, ServerCounters.read(server, model).since(before)


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


def start(cfg: Config, dtype: str, **env: str) -> ServerProcess:
    visual, textual = generate("vit-b-32", dtype, cfg.workdir / "models")
    return start_server(cfg.workdir / "servers", visual, textual, 600, **{**cfg.server_env, **env})


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


# -- lone request: the latency batching adds when there is nothing to batch -------------------
@dataclass(frozen=True)
class LoneRequest:
    bare_p50_s: float  # one batch-1 call, the server's layout of the visual model
    default_p50_s: float  # one batch-1 call, ONNX Runtime's default threads
    layout: ThreadLayout
    http: LoadResult
    activity: Activity


def lone_request_latency(cfg: Config, dtype: str, rounds: int = 3) -> LoneRequest:
    """One 256-px JPEG at a time over HTTP vs one bare batch-1 session call, in alternating
    rounds: measured minutes apart, this VM's drift alone would move the comparison by more
    than the 5 ms it is about. The bare call is timed both in the server's layout of the visual
    model and with ONNX Runtime's default threads, so that the layout's cost shows too."""
    seconds = 1.0 if cfg.quick else 1.5 if cfg.gpu else 3.0
    thumbs = thumbnails()
    path = generate("vit-b-32", dtype, cfg.workdir / "models")[0]
    layout = thread_layout(Settings(), "visual", cfg.gpu)
    sessions = {
        "server": ModelSession(path, cfg.providers, intra_op_threads=layout.intra_op_threads),
        "default": ModelSession(path, cfg.providers),
    }
    x = sessions["server"].example_input(1)
    bare: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        session.run(x)
    http = LoadResult(1, 0.0)
    server = start(cfg, dtype)
    try:
        before = ServerCounters.read(server, "visual")
        for _ in range(rounds):
            for name, session in sessions.items():
                stop_at = time.perf_counter() + seconds
                while (now := time.perf_counter()) < stop_at:
                    session.run(x)
                    bare[name].append(time.perf_counter() - now)
            http.add_window(run_load(server.url, thumbs, 1, 0.5, seconds))
        activity = ServerCounters.read(server, "visual").since(before)
    finally:
        server.stop()
    result = LoneRequest(
        float(np.percentile(bare["server"], 50)),
        float(np.percentile(bare["default"], 50)),
        layout,
        http,
        activity,
    )
    print(
        f"lone request: bare batch-1 call p50 {fmt_ms(result.bare_p50_s)} ms (server layout), "
        f"{fmt_ms(result.default_p50_s)} ms (default threads); HTTP C=1 p50 "
        f"{fmt_ms(http.percentile(50))} ms",
        flush=True,
    )
    return result


# -- 3. search while indexing ------------------------------------------------------------------
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


# -- 4. what one process carries -------------------------------------------------------------
def process_ceiling(cfg: Config, concurrency: int) -> list[str]:
    """req/s of one server process when the model costs next to nothing (`tiny` models): the
    limit of the HTTP, multipart, decoding and event-loop work around the model, which decides
    how many server processes a fast GPU needs."""
    visual, textual = generate("tiny", "float32", cfg.workdir / "models")
    bare = {
        kind: measure_session(ModelSession(path, cfg.providers), 8, 2.0)
        for kind, path in (("visual", visual), ("textual", textual))
    }
    env = {**cfg.server_env, "PHOTOFIELD_AI_MAX_BATCH_SIZE": "64"}
    server = start_server(cfg.workdir / "servers", visual, textual, 600, **env)
    thumbs = thumbnails()
    texts = searches()
    rows = []
    try:
        for label, workload, model in (
            ("256-px JPEG", thumbs, "visual"),
            ("text", texts, "textual"),
        ):
            r, a = measure(
                server,
                model,
                functools.partial(
                    run_load,
                    server.url,
                    workload,
                    concurrency,
                    cfg.warmup_s,
                    cfg.measure_s,
                    cfg.client_processes,
                ),
            )
            cores = a.cpu_s / a.wall_s if a.cpu_s is not None and a.wall_s else float("nan")
            loop = a.loop_cpu_s / a.wall_s if a.loop_cpu_s is not None and a.wall_s else None
            rows.append(
                [
                    label,
                    str(concurrency),
                    f"{r.requests_per_s:.0f}",
                    fmt_ms(r.percentile(50)),
                    fmt_ms(r.percentile(99)),
                    f"{a.mean_batch:.1f}",
                    f"{100 * a.busy:.0f} %",
                    f"{cores:.2f}",
                    f"{1000 * cores / r.requests_per_s:.2f}" if r.requests_per_s else "-",
                    f"{1000 * loop / r.requests_per_s:.2f}"
                    if loop is not None and r.requests_per_s
                    else "-",
                    ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0",
                ]
            )
            print(f"process ceiling {label}: {r.requests_per_s:.0f} req/s", flush=True)
    finally:
        server.stop()
    lines = [
        "## 4. What one server process carries",
        "",
        "The same server with generated `tiny` models (two 64-wide layers: inference costs "
        "next to nothing), so req/s is bounded by the work around the model: HTTP, multipart "
        "parsing, JPEG decoding and resizing, tokenizing, the event loop. *Server CPU* is the "
        "server process's user + system time over the run (warm-up included) per wall "
        "second; per request it is what a core-count estimate for a fast accelerator starts "
        "from. The event loop is one thread (HTTP parsing, multipart, the handlers and "
        "batchers): its CPU per request bounds one process at 1000 / that many req/s on "
        "this CPU, whatever the number of cores. The load generator shares the machine. "
        "The bare `tiny` session calls, for "
        f"scale: {bare['visual']:.0f} images/s and {bare['textual']:.0f} texts/s at batch 8.",
        "",
    ]
    lines += table(
        [
            "request",
            "C",
            "req/s",
            "p50",
            "p99",
            "mean batch",
            "model busy",
            "server CPU (cores)",
            "CPU ms / request",
            "of which event loop",
            "errors",
        ],
        rows,
    )
    return lines


def summary(
    ceilings: dict[str, float],
    results: dict[tuple[str, str, int], LoadResult],
    dtype: str,
    lone: LoneRequest,
) -> list[str]:
    lines = ["## Targets", ""]
    rows = []
    for label, kind in (("256-px JPEG", "visual"), ("text", "textual")):
        c = 32 if label != "text" else 16
        r = results.get((label, "on", c))
        if r is None:
            continue
        ceiling = ceilings[f"{kind}-{dtype}"]
        rows.append(
            [
                f"{label} req/s at C={c} vs {kind} ceiling",
                f"{r.requests_per_s:.1f} / "
                f"{ceiling:.1f} = {100 * r.requests_per_s / ceiling:.0f} %",
                "≥ 95 %",
            ]
        )
    p50 = lone.http.percentile(50)
    threads = lone.layout.intra_op_threads or "default"
    rows.append(
        [
            "256-px JPEG p50 at C=1 vs one bare batch-1 call in the server's layout "
            f"({threads} thread(s)), alternating rounds",
            f"{fmt_ms(p50)} ms vs {fmt_ms(lone.bare_p50_s)} ms "
            f"({(p50 - lone.bare_p50_s) * 1000:+.1f} ms; the server's own calls took "
            f"{fmt_ms(lone.activity.mean_call_s)} ms on average)",
            "≤ call + 5 ms",
        ]
    )
    if lone.layout.intra_op_threads:
        rows.append(
            [
                "the same, vs one bare batch-1 call with ONNX Runtime's default threads",
                f"{fmt_ms(p50)} ms vs {fmt_ms(lone.default_p50_s)} ms "
                f"({(p50 - lone.default_p50_s) * 1000:+.1f} ms): the price of the indexing "
                "layout for a lone image",
                "(informative)",
            ]
        )
    worse = [
        f"{label} C={c}"
        for (label, mode, c), r in results.items()
        if mode == "on"
        and (off := results.get((label, "off (N=1)", c))) is not None
        and r.requests_per_s < off.requests_per_s
    ]
    rows.append(
        [
            "batching on ≥ off at every concurrency",
            "yes" if not worse else "no: " + ", ".join(worse),
            "never worse",
        ]
    )
    lines += table(["target", "measured", "goal"], rows)
    lines += [
        NOISE_NOTE,
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--gpu", action="store_true", help="CUDA + float16 models")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    parser.add_argument("--seconds", type=float, default=None, help="measuring window per run")
    parser.add_argument("--client-processes", type=int, default=None)
    args = parser.parse_args(argv)
    if args.gpu and "CUDAExecutionProvider" not in ort.get_available_providers():
        # Otherwise ONNX Runtime warns and runs everything on the CPU under a GPU heading.
        parser.exit(
            2,
            "--gpu needs ONNX Runtime's CUDA provider; available here: "
            f"{', '.join(ort.get_available_providers())}. Install the GPU build with "
            "`sh deploy/install.sh --gpu --dev .venv`.\n",
        )
    quick = args.quick
    cfg = Config(
        gpu=args.gpu,
        quick=quick,
        workdir=args.workdir,
        measure_s=args.seconds or (3.0 if quick else 10.0 if not args.gpu else 4.0),
        warmup_s=1.0 if quick or args.gpu else 2.0,
        client_processes=args.client_processes or (min(8, os.cpu_count() or 1) if args.gpu else 1),
    )
    dtype = "float16" if args.gpu else "float32"
    if args.gpu:
        dtypes, batch_sizes = ["float16"], [1, 2, 4, 8, 16, 32, 64, 128, 256]
        image_conc, photo_conc, text_conc = [1, 8, 32, 64, 256, 512], [8, 32, 64], [1, 16]
    elif quick:
        dtypes, batch_sizes = ["float32"], [1, 4, 8]
        image_conc, photo_conc, text_conc = [1, 8], [8], [1]
    else:
        dtypes, batch_sizes = ["float32", "float16", "quint8"], [1, 2, 4, 8, 16, 32, 64]
        image_conc, photo_conc, text_conc = [1, 8, 32, 64], [1, 8, 32, 64], [1, 16]
    started = time.time()
    ceiling_lines, ceilings = model_ceiling(cfg, dtypes, batch_sizes)
    lone = lone_request_latency(cfg, dtype)
    http_lines, results = http_tables(cfg, dtype, image_conc, text_conc, photo_conc)
    load_lines, _, _ = text_under_load(cfg, dtype, 32 if not args.gpu else 256)
    process_lines = process_ceiling(cfg, 256 if args.gpu else 64)
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    gpu = gpu_name() if args.gpu else None
    flops = PRESETS["vit-b-32"].visual.flops_per_item() / 1e9
    text_flops = PRESETS["vit-b-32"].textual.flops_per_item() / 1e9
    header = [
        "# Benchmarks" if not args.gpu else "# GPU benchmarks",
        "",
        f"- Command: `{command.strip()}` ({(time.time() - started) / 60:.1f} min)",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores"
        + (f", GPU {gpu}" if gpu else ", no GPU"),
        f"- Software: photofield-ai {__version__}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}, providers "
        f"{', '.join(cfg.providers)}",
        f"- Models: generated `vit-b-32` (CLIP ViT-B/32 layer shapes, random weights; "
        f"{flops:.2f} GFLOPs per image, {text_flops:.2f} per text), {dtype} for the HTTP runs",
        "- The load generator runs on the same machine as the server and takes CPU from it.",
        "",
    ]
    report = (
        header
        + summary(ceilings, results, dtype, lone)
        + ceiling_lines
        + http_lines
        + load_lines
        + process_lines
    )
    text = "\n".join(report)
    if args.out.exists():
        old = args.out.read_text()
        for name in KEPT_SECTIONS:
            start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
            if start in old and end in old:
                kept = old[old.index(start) : old.index(end) + len(end)]
                text = text.rstrip("\n") + "\n\n" + kept + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
