"""Where a lone request's round trip goes: one closed-loop client against the server on the
simulated accelerator (W=1), split by the server's own histograms, and what this machine
charges any code that runs once every few milliseconds instead of back to back.

    python -m benchmarks.lone [--seconds 6] [--real SECONDS] [--bare-order SECONDS]
                              [--out BENCHMARKS.md]

Photofield's indexing speed on an accelerator is 4 ÷ the round trip (issue #11's "lone
overhead": the round trip minus the model call). The server's histograms give each stage's mean
over the same window: preprocessing (decode and crop, or tokenize; a thread hop included when
it runs on a thread), the wait between queueing and the call starting, and the call itself
(the simulated α + β·1, made on the event loop when the request is alone in the server, else
on a thread with the hops there and back). What they do not
cover — HTTP parsing, multipart, handlers, the response — is the rest of the server's time;
what the server's request timer does not see is the client and the sockets.

With `--real SECONDS`, also #12's lone rows on the real generated ViT-B/32 float32 models: a
thumbnail and a search at C=1 against one bare batch-1 call in each thread layout, paired
request by request for SECONDS per kind (the full suite runs 40). With `--bare-order SECONDS`,
the bare calls alone by turns, each layout's p50 by the call before it.

The last table times single steps in this process, back to back and after an idle gap as
long as a lone request's round trip: caches, branch predictors and idle cores that had time to
cool make the same work slower, and a lone request pays that on every step. Its last row is
the simulated call's own sleep as this machine sleeps it (the wake-up; the sleep asks for no
timer slack, runtime.simulated says why): what of
the "lone overhead" (measured against the α + β asked) is the simulation's, not the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.accelerator import SIMULATED, simulated_call_s, start_accelerated
from benchmarks.common import (
    Config,
    command_line,
    cpu_name,
    fmt_ms,
    publish,
    searches,
    table,
    thumbnails,
)
from benchmarks.counters import histogram_mean, scrape
from benchmarks.http_tables import (
    BARE_LAYOUTS,
    bare_layout_sessions,
    by_turns,
    lone_request_latency,
)
from benchmarks.load import run_load
from photofield_ai.clip.preprocess import decode_and_crop
from photofield_ai.families import KINDS
from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.runtime.simulated import wait_like_a_gpu
from photofield_ai.testing.generate import generate
from tests.images import jpeg


def lone_rows(cfg: Config, kind: str) -> list[list[str]]:
    workload = thumbnails() if kind == "image" else searches()
    model = "visual" if kind == "image" else "textual"
    endpoint = "/image-embeddings" if kind == "image" else "/text-embeddings"
    server = start_accelerated(cfg, 1)
    try:
        run_load(server.url, workload, 1, 1.0, 2.0)  # warm up
        before = scrape(server.url)
        result = run_load(server.url, workload, 1, 0.0, cfg.measure_s)
        after = scrape(server.url)
    finally:
        server.stop()
    trip = float(np.mean(result.latencies))
    request_timer = "photofield_ai_http_request_duration_seconds"
    in_server = histogram_mean(before, after, request_timer, endpoint=endpoint, method="POST")
    prep = histogram_mean(before, after, "photofield_ai_preprocess_seconds", kind=kind)
    queued = histogram_mean(before, after, "photofield_ai_queue_wait_seconds", model=model)
    call = histogram_mean(before, after, "photofield_ai_inference_seconds", model=model)
    label = "256-px JPEG" if kind == "image" else "one text"
    simulated = simulated_call_s(label)
    steps = [
        ("round trip (client's mean)", trip),
        ("outside the server's request timer (client, sockets)", trip - in_server),
        ("in the server", in_server),
        (
            "preprocess (decode + crop)" if kind == "image" else "preprocess (tokenize)",
            prep,
        ),
        ("queued → call started", queued),
        ("model call (on the event loop when alone in the server, else incl. thread hops)", call),
        ("of which the simulated call (α + β)", simulated),
        ("rest: HTTP, multipart/JSON, handlers, response", in_server - prep - queued - call),
        ("lone overhead: round trip − simulated call", trip - simulated),
    ]
    return [[label, name, f"{ms * 1000:.2f}"] for name, ms in steps]


def _timed_us(step: Callable[[int], object], gap_s: float, n: int = 300) -> float:
    """Median µs of `step`, run back to back (gap 0) or after `gap_s` of busy waiting."""
    times = []
    for i in range(n + 20):
        end = time.perf_counter() + gap_s
        while time.perf_counter() < end:
            pass
        started = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - started)
    return float(np.median(times[20:])) * 1e6


def _thread_round_trip_us(idle_s: float, n: int = 300) -> float:
    """Median µs to hand a no-op to a worker thread and get the answer back on the event
    loop, the loop idle (sleeping) for `idle_s` before each."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        times = []
        with ThreadPoolExecutor(1) as pool:
            for _ in range(n + 20):
                await asyncio.sleep(idle_s)
                started = time.perf_counter()
                await loop.run_in_executor(pool, int)
                times.append(time.perf_counter() - started)
        return float(np.median(times[20:])) * 1e6

    return asyncio.run(main())


def cold_rows(gap_s: float) -> list[list[str]]:
    images = [jpeg(256, 192, quality=85, seed=i) for i in range(16)]
    limits = DecodeLimits()

    def decode(i: int) -> object:
        return decode_and_crop(images[i % 16], 224, limits)

    def allocate(i: int) -> object:
        pixels = np.empty((224, 298, 3), np.uint8)
        pixels.fill(0)
        return pixels

    asked_s = simulated_call_s("256-px JPEG")

    def simulated_call(i: int) -> object:
        wait_like_a_gpu(asked_s)  # what SimulatedSession.run does, as this machine sleeps it
        return None

    rows = []
    for name, step in (
        ("decode + crop a 256-px JPEG", decode),
        ("allocate and fill 200 kB (a resized thumbnail)", allocate),
        (f"sleep {asked_s * 1000:.2f} ms (the simulated call, α + β)", simulated_call),
    ):
        rows.append(
            [name, f"{_timed_us(step, 0.0):.0f}", f"{_timed_us(step, gap_s):.0f}", "busy wait"]
        )
    rows.append(
        [
            "event loop → thread → event loop (a no-op)",
            f"{_thread_round_trip_us(0.0):.0f}",
            f"{_thread_round_trip_us(gap_s):.0f}",
            "loop asleep",
        ]
    )
    return rows


def real_rows(cfg: Config, seconds: float) -> list[list[str]]:
    """C=1 p50 over HTTP against the best bare batch-1 call, real generated models."""
    rows = []
    for kind, lone in lone_request_latency(cfg, "float32", seconds).items():
        p50, best = lone.http.percentile(50), lone.best_bare_s
        rows.append(
            [
                "256-px JPEG" if kind == "visual" else "one text",
                ", ".join(f"{n} {fmt_ms(v)} ms" for n, v in lone.bare_p50_s.items()),
                f"{fmt_ms(p50)} ms ({len(lone.http.latencies)} requests)",
                f"{(p50 - best) * 1000:+.1f} ms",
                f"{np.mean(lone.http.latencies) * 1000:.1f} / "
                f"{lone.activity.mean_call_s * 1000:.1f} / "
                f"{lone.bare_mean_s[lone.best_layout] * 1000:.1f} ms",
            ]
        )
    return rows


def order_rows(cfg: Config, seconds: float) -> list[list[str]]:
    """The bare batch-1 calls of `BARE_LAYOUTS` taking turns in every order, for `seconds` per
    model: p50 of each layout by the call made just before it. Interleaved call by call, so the
    VM's drift hits every cell alike. If what a call follows changed what it costs, a pairing in
    one fixed order would favour one layout; `lone_request_latency` lets them take turns."""
    rows = []
    paths = generate("vit-b-32", "float32", cfg.workdir / "models")
    for kind, path in zip(KINDS, paths, strict=True):
        sessions, x = bare_layout_sessions(path, cfg.providers, kind)
        times: dict[tuple[str, str], list[float]] = {}
        orders = by_turns(sessions)
        before = ""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for name in next(orders):
                started = time.perf_counter()
                sessions[name].run(x)
                times.setdefault((name, before), []).append(time.perf_counter() - started)
                before = name
        for name in sessions:
            rows.append(
                [
                    kind,
                    name,
                    *(
                        fmt_ms(float(np.percentile(times[(name, b)], 50)))
                        if times.get((name, b))
                        else "-"
                        for b in sessions
                    ),
                ]
            )
        del sessions
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring window per kind")
    parser.add_argument("--gap-ms", type=float, default=4.0, help="idle gap for the second table")
    parser.add_argument("--real", type=float, default=0, metavar="SECONDS", help="see above")
    parser.add_argument(
        "--bare-order",
        type=float,
        default=0,
        metavar="SECONDS",
        help="also time the bare calls by turns, by the call before each, SECONDS per model",
    )
    parser.add_argument("--out", type=Path, help="record in this BENCHMARKS.md")
    args = parser.parse_args(argv)
    cfg = Config(False, False, Path(".bench"), args.seconds, 1.0, 1)
    rows = [*lone_rows(cfg, "image"), *lone_rows(cfg, "text")]
    real = real_rows(cfg, args.real) if args.real else []
    order = order_rows(cfg, args.bare_order) if args.bare_order else []
    cold = cold_rows(args.gap_ms / 1000)
    lines = [
        "## Where a lone request's round trip goes",
        "",
        f"`{command_line('lone', argv)}`, {datetime.date.today()}, {cpu_name()}: one "
        "closed-loop client, the server on the simulated accelerator "
        f"({SIMULATED['PHOTOFIELD_AI_VISUAL_MODEL']}, {SIMULATED['PHOTOFIELD_AI_TEXTUAL_MODEL']}), "
        f"W=1, {args.seconds:g} s per kind. Means in ms, from the server's own histograms over "
        "the window (benchmarks/lone.py says what each covers).",
        "",
        *table(["request", "step", "ms"], rows),
        *(
            [
                f"The real generated ViT-B/32 float32 models (#12), {args.real:g} s per kind, "
                "paired request by request (each HTTP request followed by one bare call in each "
                "thread layout, the layouts taking turns in every order): C=1 p50 over HTTP "
                "against the bare calls' p50, and the difference from the best of them "
                "(target ≤ +5 ms). The last column is where the difference goes, in means: the "
                "round trip, the server's own model call (its histogram over the same window, "
                "thread hops included) and the best layout's bare call:",
                "",
                *table(
                    [
                        "request",
                        "bare batch-1 call",
                        "C=1 over HTTP",
                        "vs the best",
                        "means: round trip / server's call / best bare call",
                    ],
                    real,
                ),
            ]
            if real
            else []
        ),
        *(
            [
                f"The bare batch-1 calls alone, taking turns in every order for "
                f"{args.bare_order:g} s per model: p50 in ms of each layout by the call made "
                "just before it (the pairing above lets the layouts take turns, so none always "
                "follows the same call).",
                "",
                *table(["model", "call", *(f"after {b}" for b in BARE_LAYOUTS)], order),
            ]
            if order
            else []
        ),
        f"The same steps in one process, back to back and after {args.gap_ms:g} ms of something "
        "else (median µs):",
        "",
        *table(["step", "back to back", f"after {args.gap_ms:g} ms", "gap"], cold),
    ]
    publish(lines, args.out, "lone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
