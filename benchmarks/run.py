"""The benchmark suite: model-only ceiling, end-to-end HTTP with batching on and off, and search
latency while a library indexes. Writes a markdown report (BENCHMARKS.md).

    make bench                      # CPU, generated ViT-B/32 models, ~10 minutes on 2 cores
    python -m benchmarks.run --gpu  # CUDA machine with onnxruntime-gpu, float16, < 5 minutes
    python -m benchmarks.run --quick --out /tmp/bench.md   # a smoke run of everything
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.load import LoadResult, Workload, run_load, run_mixed
from photofield_ai import __version__
from photofield_ai.runtime import ModelSession
from photofield_ai.testing.models import PRESETS, generate
from photofield_ai.testing.server import ServerProcess, start_server
from tests.images import jpeg

SOAK_START, SOAK_END = "<!-- soak:start -->", "<!-- soak:end -->"
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
def measure_session(session: ModelSession, batch: int, min_s: float) -> float:
    x = session.example_input(batch)
    session.run(x)  # warm-up for this shape
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < min_s:
        session.run(x)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def model_ceiling(
    cfg: Config, dtypes: list[str], batch_sizes: list[int]
) -> tuple[list[str], dict[str, float]]:
    lines = [
        "## 1. Model-only ceiling (raw ONNX Runtime, items/s)",
        "",
        "One `session.run` on a stacked batch, no HTTP, no preprocessing. The ceiling the "
        "server's throughput is compared with is the best of each row.",
        "",
    ]
    ceilings: dict[str, float] = {}
    rows: list[list[str]] = []
    min_s = 1.0 if cfg.quick else 3.0
    for dtype in dtypes:
        visual_path, textual_path = generate("vit-b-32", dtype, cfg.workdir / "models")
        for kind, path in (("visual", visual_path), ("textual", textual_path)):
            session = ModelSession(path, cfg.providers)
            rates = [measure_session(session, b, min_s) for b in batch_sizes]
            best = max(rates)
            ceilings[f"{kind}-{dtype}"] = best
            best_b = batch_sizes[rates.index(best)]
            rows.append([kind, dtype, *(f"{r:.1f}" for r in rates), f"**{best:.1f}** (b={best_b})"])
            print(
                f"ceiling {kind} {dtype}: "
                + ", ".join(f"b{b}={r:.1f}" for b, r in zip(batch_sizes, rates, strict=True)),
                flush=True,
            )
            del session
    lines += table(["model", "dtype", *(f"b={b}" for b in batch_sizes), "best"], rows)
    return lines, ceilings


# -- 2. end-to-end HTTP ------------------------------------------------------------------------
def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def result_row(label: str, batching: str, r: LoadResult) -> list[str]:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"
    return [
        label,
        str(r.concurrency),
        batching,
        f"{r.requests_per_s:.1f}",
        fmt_ms(r.percentile(50)),
        fmt_ms(r.percentile(90)),
        fmt_ms(r.percentile(99)),
        errors,
    ]


def start(cfg: Config, dtype: str, **env: str) -> ServerProcess:
    visual, textual = generate("vit-b-32", dtype, cfg.workdir / "models")
    return start_server(cfg.workdir / "servers", visual, textual, 600, **{**cfg.server_env, **env})


def http_tables(
    cfg: Config, dtype: str, image_conc: list[int], text_conc: list[int], photo_conc: list[int]
) -> tuple[list[str], dict[tuple[str, str, int], LoadResult]]:
    thumbs = Workload("image", tuple(jpeg(256, 192, quality=85, seed=i) for i in range(16)))
    photos = Workload("image", tuple(jpeg(4000, 3000, quality=90, seed=i) for i in range(3)))
    texts = Workload("text", texts=TEXTS)
    results: dict[tuple[str, str, int], LoadResult] = {}
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
            for c in concs:
                for mode, _ in modes:
                    r = run_load(
                        servers[mode].url,
                        workload,
                        c,
                        cfg.warmup_s,
                        cfg.measure_s,
                        cfg.client_processes,
                    )
                    results[(label, mode, c)] = r
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
        "service. Same machine, same run, on and off measured back to back.",
        "",
    ]
    rows = [
        result_row(label, mode, r)
        for (label, mode, _), r in sorted(
            results.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])
        )
    ]
    lines += table(["request", "C", "batching", "req/s", "p50", "p90", "p99", "errors"], rows)
    return lines, results


# -- 3. search while indexing ------------------------------------------------------------------
def text_under_load(
    cfg: Config, dtype: str, image_concurrency: int
) -> tuple[list[str], LoadResult, LoadResult]:
    thumbs = Workload("image", tuple(jpeg(256, 192, quality=85, seed=i) for i in range(16)))
    texts = Workload("text", texts=TEXTS)
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


def summary(
    ceilings: dict[str, float],
    results: dict[tuple[str, str, int], LoadResult],
    dtype: str,
    single_call_s: float,
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
    r1 = results.get(("256-px JPEG", "on", 1))
    if r1 is not None:
        rows.append(
            [
                "256-px JPEG p50 at C=1 vs one batch-1 call",
                f"{fmt_ms(r1.percentile(50))} ms vs {fmt_ms(single_call_s)} ms",
                "≤ call + 5 ms",
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
    quick = args.quick
    cfg = Config(
        gpu=args.gpu,
        quick=quick,
        workdir=args.workdir,
        measure_s=args.seconds or (3.0 if quick else 10.0 if not args.gpu else 5.0),
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
    visual = ModelSession(generate("vit-b-32", dtype, cfg.workdir / "models")[0], cfg.providers)
    single_call_s = 1 / measure_session(visual, 1, 1.0 if quick else 3.0)
    del visual
    http_lines, results = http_tables(cfg, dtype, image_conc, text_conc, photo_conc)
    load_lines, _, _ = text_under_load(cfg, dtype, 32 if not args.gpu else 256)
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
        + summary(ceilings, results, dtype, single_call_s)
        + ceiling_lines
        + http_lines
        + load_lines
    )
    text = "\n".join(report)
    if args.out.exists():  # keep the soak section (benchmarks/soak.py) of an earlier run
        old = args.out.read_text()
        if SOAK_START in old and SOAK_END in old:
            soak = old[old.index(SOAK_START) : old.index(SOAK_END) + len(SOAK_END)]
            text = text.rstrip("\n") + "\n\n" + soak + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
