"""Section 5: accelerator-class throughput — what the server carries when the model's cost is
an accelerator's (the simulated accelerator on a CPU machine, the real GPU with --gpu), with one
process (W=1) and with W HTTP worker processes in front of one inference process.

Per row: req/s, latency, the mean batch the server formed, and the server's CPU per request (all
its processes), of which on the HTTP event loops and in the inference process. The projection
divides a host's cores by the CPU per request: what the work around the model allows there,
stated as a projection, not a measurement.

On its own, a repeat of section 5 without the rest of the suite (with --out, recorded in its own
section of BENCHMARKS.md, which a full run keeps):

    python -m benchmarks.accelerator --workers 1,2 --concurrency 1,64 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    MODEL_PATH_ONLY,
    Config,
    command_line,
    cpu_name,
    fmt_ms,
    record_section,
    searches,
    table,
    thumbnails,
)
from benchmarks.counters import Activity, inference_process_cpu_s, measure
from benchmarks.load import LoadResult, Workload, run_load
from photofield_ai.runtime.simulated import parse
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import ServerProcess, start_server

SIMULATED = {
    "PHOTOFIELD_AI_VISUAL_MODEL": "simulated://visual",
    "PHOTOFIELD_AI_TEXTUAL_MODEL": "simulated://textual",
}
PROJECTION_CORES = 16  # the GPU host of the targets (an H100/H200 box)
ROUNDS = 2


@dataclass
class Row:
    label: str
    workers: int
    concurrency: int
    result: LoadResult
    activity: Activity
    inference_cpu_s: float

    # Per request: CPU time over the items the server itself counted between the same two
    # readings (one item per request here). The readings bracket the warm-up too, so the
    # client's count of the measured window alone would charge the warm-up's CPU to fewer
    # requests (about 1.2× too much with 1 s of warm-up before 5 s measured).
    def cpu_ms(self) -> float | None:
        n = self.activity.items
        return 1000 * self.activity.cpu_s / n if self.activity.cpu_s is not None and n else None

    def loop_ms(self) -> float | None:
        n = self.activity.items
        loop = self.activity.loop_cpu_s
        return 1000 * loop / n if loop is not None and n else None

    def inference_ms(self) -> float:
        n = self.activity.items
        return 1000 * self.inference_cpu_s / n if n else 0.0


def simulated_call_s(label: str) -> float:
    """One batch-1 call of the simulated model the rows of `label` ran on."""
    kind = "VISUAL" if label == "256-px JPEG" else "TEXTUAL"
    return parse(SIMULATED[f"PHOTOFIELD_AI_{kind}_MODEL"]).call_seconds(1)


def lone_overhead_ms(row: Row) -> float:
    """C=1 p50 minus the simulated call: the server's own share of a lone request."""
    return (row.result.percentile(50) - simulated_call_s(row.label)) * 1000


def one_process_bound(row: Row) -> str:
    """req/s that the serial part of the server allows whatever the cores: one event loop
    (W=1) or the one inference process in front of the accelerator (W > 1)."""
    if row.workers > 1:
        ms, part = row.inference_ms(), "inference process"
    else:
        ms, part = row.loop_ms() or 0.0, "event loop"
    return f"{1000 / ms:.0f} req/s ({part})" if ms else "-"


def start_accelerated(cfg: Config, workers: int) -> ServerProcess:
    """The server with W workers on the accelerator: the simulated one, or with --gpu the
    GPU and generated float16 models."""
    if cfg.gpu:
        visual, textual = generate("vit-b-32", "float16", cfg.workdir / "models")
        env = {**cfg.server_env, "PHOTOFIELD_AI_WORKERS": str(workers)}
        return start_server(cfg.workdir / "servers", visual, textual, 600, **env)
    env = {**SIMULATED, **MODEL_PATH_ONLY, "PHOTOFIELD_AI_WORKERS": str(workers)}
    return start_server(cfg.workdir / "servers", None, None, 120, **env)


def _measure(
    cfg: Config, server: ServerProcess, workload: Workload, concurrency: int, seconds: float
) -> tuple[LoadResult, Activity, float]:
    model = "textual" if workload.kind == "text" else "visual"
    before = inference_process_cpu_s(server.process.pid)
    run = functools.partial(
        run_load,
        server.url,
        workload,
        concurrency,
        cfg.warmup_s / 2,
        seconds,
        cfg.client_processes if concurrency > 4 else 1,
    )
    result, activity = measure(server, model, run)
    return result, activity, inference_process_cpu_s(server.process.pid) - before


def accelerator_table(
    cfg: Config, worker_counts: list[int], concurrencies: list[int]
) -> tuple[list[str], list[Row]]:
    rows: dict[tuple[str, int, int], Row] = {}
    servers = {w: start_accelerated(cfg, w) for w in worker_counts}
    seconds = cfg.measure_s / ROUNDS
    try:
        for label, workload in (("256-px JPEG", thumbnails()), ("one text", searches())):
            for c in concurrencies:
                for _ in range(ROUNDS):  # the variants alternate, so drift hits all alike
                    for w, server in servers.items():
                        result, activity, inference = _measure(cfg, server, workload, c, seconds)
                        key = (label, w, c)
                        if key in rows:
                            rows[key].result.add_window(result)
                            rows[key].activity = rows[key].activity.combine(activity)
                            rows[key].inference_cpu_s += inference
                        else:
                            rows[key] = Row(label, w, c, result, activity, inference)
                for w in servers:
                    row = rows[(label, w, c)]
                    print(
                        f"accelerator {label} W={w} C={c}: {row.result.requests_per_s:.0f} "
                        f"req/s, CPU {row.cpu_ms() or float('nan'):.2f} ms/request",
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    return _report(cfg, list(rows.values())), list(rows.values())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _report(cfg: Config, rows: list[Row]) -> list[str]:
    visual, textual = (
        parse(SIMULATED["PHOTOFIELD_AI_VISUAL_MODEL"]),
        parse(SIMULATED["PHOTOFIELD_AI_TEXTUAL_MODEL"]),
    )
    model = (
        "the GPU, generated ViT-B/32 float16"
        if cfg.gpu
        else f"the simulated accelerator (`{visual.location}`, `{textual.location}`: a batch "
        f"call sleeps α + β·b, no CPU)"
    )
    lines = [
        "## 5. Accelerator-class throughput: one process and several",
        "",
        f"The server on {model}; W = HTTP worker processes (`PHOTOFIELD_AI_WORKERS`; W > 1 adds "
        "one inference process that batches across the workers, tensors in shared memory). "
        f"Closed loop, {cfg.measure_s:.0f} s per row in {ROUNDS} alternating rounds. *CPU / "
        "request* is every server process's CPU time over the items the server embedded "
        "between the same two readings (warm-up included in both), *HTTP loops* the "
        "event-loop threads' share, *inference* the inference process's. *Lone overhead* = "
        "C=1 p50 − one batch-1 call of the simulated model. "
        f"*Projection* = {PROJECTION_CORES} cores ÷ CPU per request: what the work around the "
        "model would allow on a 16-core GPU host of this CPU class — a projection, not a "
        "measurement. *One-process bound* = 1000 ÷ the ms per request of the one part that "
        "does not spread over cores: the event loop with W=1, the inference process with "
        "W > 1 (all its CPU counted, as if its threads never ran at once: they share one "
        "interpreter lock). More cores do not lift it: a host carries the lower of the two. "
        "The load generator shares this machine's cores.",
        "",
    ]
    body = []
    for r in sorted(rows, key=lambda r: (r.label, r.concurrency, r.workers)):
        cpu = r.cpu_ms()
        lone = f"{lone_overhead_ms(r):.2f}" if r.concurrency == 1 and not cfg.gpu else ""
        body.append(
            [
                r.label,
                str(r.workers),
                str(r.concurrency),
                f"{r.result.requests_per_s:.0f}",
                fmt_ms(r.result.percentile(50)),
                fmt_ms(r.result.percentile(99)),
                f"{r.activity.mean_batch:.1f}",
                _ms(cpu),
                _ms(r.loop_ms()),
                f"{r.inference_ms():.2f}" if r.workers > 1 else "-",
                lone,
                f"{PROJECTION_CORES * 1000 / cpu:.0f} req/s" if cpu else "-",
                one_process_bound(r),
                ", ".join(f"{k}: {v}" for k, v in sorted(r.result.errors.items())) or "0",
            ]
        )
    lines += table(
        [
            "request",
            "W",
            "C",
            "req/s",
            "p50",
            "p99",
            "mean batch",
            "CPU / request (ms)",
            "HTTP loops (ms)",
            "inference (ms)",
            "lone overhead (ms)",
            f"projection, {PROJECTION_CORES} cores",
            "one-process bound",
            "errors",
        ],
        body,
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated W values")
    parser.add_argument("--concurrency", default="1,64", help="comma-separated C values")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per row")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    parser.add_argument("--out", type=Path, help="record in this BENCHMARKS.md")
    args = parser.parse_args(argv)
    cfg = Config(False, False, args.workdir, args.seconds, 2.0, 1)
    workers = [int(w) for w in args.workers.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(f"CPU: {cpu_name()}")
    lines, _ = accelerator_table(cfg, workers, concurrencies)
    print("\n".join(lines))
    if args.out is not None:
        command = command_line("accelerator", argv)
        # Section 5's own heading becomes a sub-heading of the repeat.
        body = [line.replace("## 5. ", "### ", 1) for line in lines]
        record_section(
            args.out,
            "accelerator-repeat",
            [
                "## Section 5 repeated on its own",
                "",
                f"`{command}`, {datetime.date.today().isoformat()}, {cpu_name()}, "
                f"{os.cpu_count()} cores: the same measurement as section 5, run apart from "
                "the full suite. Both are kept because this VM's speed drifts between runs "
                "by as much as the targets' margins; read the two together.",
                "",
                *body,
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
