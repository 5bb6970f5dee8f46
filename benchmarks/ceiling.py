"""Section 1: the model-only ceiling — bare session calls at each batch size, in ONNX Runtime's
default layout and in the server's own, the figure every HTTP number is compared with."""

from __future__ import annotations

import threading
import time

from benchmarks.common import Config, bare_model, table
from photofield_ai.config import Settings
from photofield_ai.families import KINDS
from photofield_ai.serving.layout import ThreadLayout, thread_layout
from photofield_ai.serving.loading import LoadedEmbeddingModel
from photofield_ai.testing.generate import generate

# The targets compare the server at these concurrencies (report.summary) with the ceiling, and
# also with the best the model does with at most that many items in flight: C closed-loop clients
# never give it more, so batch sizes past C ÷ calls at once are out of their reach.
IN_FLIGHT = (4, 16, 32)


def in_flight_key(kind: str, dtype: str, c: int) -> str:
    return f"{kind}-{dtype}-in-flight-{c}"


def best_in_flight(
    batch_sizes: list[int], rates: list[float], calls_at_once: int
) -> list[tuple[int, float]]:
    """(C, the best rate with at most C items in flight) for each C of IN_FLIGHT that some
    measured batch size fits: `calls_at_once` batches of b hold b × calls_at_once items."""
    best = []
    for c in IN_FLIGHT:
        fits = [r for b, r in zip(batch_sizes, rates, strict=True) if b * calls_at_once <= c]
        if fits:
            best.append((c, max(fits)))
    return best


def measure_session(
    session: LoadedEmbeddingModel,
    batch: int,
    min_s: float,
    warm_up: bool = True,
    min_calls: int = 2,
    streams: int = 1,
) -> float:
    """items/s of back-to-back calls on one stacked batch, from `streams` threads at once."""
    x = session.encoder.example_input(batch)
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
    session: LoadedEmbeddingModel,
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
        session.run(session.encoder.example_input(b))  # the first call with a new shape allocates
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
        "throughput is compared with is the best figure of the model and dtype, any layout; "
        "the targets also name the best with at most C items in flight (batch × calls at once "
        "≤ C), all that C clients can give the model.",
        "",
    ]
    ceilings: dict[str, float] = {}
    rows: list[list[str]] = []
    for dtype in dtypes:
        # The dtype the HTTP runs use is the targets' reference: measured longest.
        # (A GPU's timings are steadier, and its run has a 5-minute budget.)
        min_s = 1.0 if cfg.quick else 2.0 if cfg.gpu else 6.0 if dtype == dtypes[0] else 3.0
        visual_path, textual_path = generate("vit-b-32", dtype, cfg.workdir / "models")
        for kind, path in zip(KINDS, (visual_path, textual_path), strict=True):
            layouts: list[tuple[str, ThreadLayout]] = [(kind, ThreadLayout(0, 1))]
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
                session = bare_model(path, cfg.providers, kind, layout.intra_op_threads)
                rates = measure_batch_sizes(
                    session, batch_sizes, min_s, streams=layout.concurrent_batches
                )
                best = max(rates)
                key = f"{kind}-{dtype}"
                ceilings[key] = max(best, ceilings.get(key, 0.0))
                for c, rate in best_in_flight(batch_sizes, rates, layout.concurrent_batches):
                    within = in_flight_key(kind, dtype, c)
                    ceilings[within] = max(rate, ceilings.get(within, 0.0))
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
