"""Section 4: what one server process carries when the model costs next to nothing — the
limit of the work around the model, which decides how a fast accelerator must be served."""

from __future__ import annotations

import functools

from benchmarks.ceiling import measure_session
from benchmarks.common import Config, bare_model, fmt_ms, searches, table, thumbnails
from benchmarks.counters import measure
from benchmarks.load import run_load
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import start_server


def process_ceiling(cfg: Config, concurrency: int) -> list[str]:
    """req/s of one server process when the model costs next to nothing (`tiny` models): the
    limit of the HTTP, multipart, decoding and event-loop work around the model, which decides
    how many server processes a fast GPU needs."""
    visual, textual = generate("tiny", "float32", cfg.workdir / "models")
    bare = {
        "visual": measure_session(bare_model(visual, cfg.providers, "visual"), 8, 2.0),
        "textual": measure_session(bare_model(textual, cfg.providers, "textual"), 8, 2.0),
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
