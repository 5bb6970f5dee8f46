"""Compare server settings side by side on this machine: each variant runs as its own server, and
every measurement is taken on one variant and at once on the next, round after round, so the
drift of a shared machine hits all alike. Prints a markdown table (and writes it with --out).

    python -m benchmarks.compare --kind image --concurrency 1,32 \\
        'threads=1,K=2:PHOTOFIELD_AI_INTRA_OP_THREADS=1,PHOTOFIELD_AI_MAX_CONCURRENT_BATCHES=2'
    python -m benchmarks.compare --kind search --concurrency 32 'same:PHOTOFIELD_AI_INDEXING_NICE=0'

`--kind search` is search while indexing: one text client while C image clients run; the row is
the text requests', with the images/s beside it.

A variant is `name:VAR=value,VAR=value` (no settings: the defaults); `default:` is always
included first. Besides PHOTOFIELD_AI_ settings a variant may set PYTHONPATH, to run the code of
another checkout (say a `git worktree` of the last commit at PYTHONPATH=/tmp/base/src).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import (
    Config,
    command_line,
    fmt_ms,
    parse_assignments,
    searches,
    start,
    table,
    thumbnails,
)
from benchmarks.counters import Activity, measure
from benchmarks.load import LoadResult, run_load, run_mixed


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = spec.partition(":")
    env = parse_assignments(assignments)
    for key in env:
        if not (key.startswith("PHOTOFIELD_AI_") or key == "PYTHONPATH"):
            raise SystemExit(f"not a PHOTOFIELD_AI_ setting or PYTHONPATH: {key!r} in {spec!r}")
    return name, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", help="name:VAR=value,...")
    parser.add_argument("--kind", choices=["image", "text", "search"], default="image")
    parser.add_argument("--concurrency", default="1,32", help="comma list")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring window per round")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cfg = Config(args.gpu, False, args.workdir, args.seconds, 1.0, 1)
    variants = dict([("default", {}), *(parse_variant(v) for v in args.variants)])
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    thumbs, texts = thumbnails(), searches()
    workload = thumbs if args.kind == "image" else texts
    model = "visual" if args.kind == "image" else "textual"
    background: dict[tuple[str, int], list[LoadResult]] = {}

    def search_while_indexing(url: str, c: int, key: tuple[str, int]) -> LoadResult:
        images, text = asyncio.run(run_mixed(url, thumbs, c, texts, cfg.warmup_s, cfg.measure_s))
        background.setdefault(key, []).append(images)
        return text

    servers = {name: start(cfg, args.dtype, **env) for name, env in variants.items()}
    results: dict[tuple[str, int], list[tuple[LoadResult, Activity]]] = {}
    try:
        for round_ in range(args.rounds):
            for c in concurrencies:
                for name, server in servers.items():
                    run = (
                        functools.partial(search_while_indexing, server.url, c, (name, c))
                        if args.kind == "search"
                        else functools.partial(
                            run_load, server.url, workload, c, cfg.warmup_s, cfg.measure_s
                        )
                    )
                    r, a = measure(server, model, run)
                    results.setdefault((name, c), []).append((r, a))
                    print(
                        f"round {round_ + 1} {name} C={c}: {r.requests_per_s:.1f} req/s, "
                        f"p50 {fmt_ms(r.percentile(50))} ms",
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for c in concurrencies:
        for name in variants:
            runs = results[(name, c)]
            latencies = [x for r, _ in runs for x in r.latencies]
            rates = [r.requests_per_s for r, _ in runs]
            errors = sum(sum(r.errors.values()) for r, _ in runs)
            images = background.get((name, c), [])
            rows.append(
                [
                    name,
                    str(c),
                    f"{np.mean(rates):.1f} ({min(rates):.1f}–{max(rates):.1f})",
                    fmt_ms(float(np.percentile(latencies, 50))) if latencies else "-",
                    fmt_ms(float(np.percentile(latencies, 99))) if latencies else "-",
                    f"{np.mean([a.mean_batch for _, a in runs]):.1f}",
                    f"{100 * np.mean([a.busy for _, a in runs]):.0f} %",
                    str(errors),
                    *([f"{np.mean([i.requests_per_s for i in images]):.1f}"] if images else []),
                ]
            )
    what = "text requests while images index" if args.kind == "search" else args.kind + " requests"
    lines = [
        f"`{command_line('compare', argv)}`",
        "",
        f"{what}, {args.rounds} rounds of {args.seconds:.0f} s per variant and "
        "concurrency, interleaved; req/s as mean (lowest–highest round).",
        "",
        *(
            f"- `{name}`: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "defaults")
            for name, env in variants.items()
        ),
        "",
        *table(
            [
                "variant",
                "C",
                "req/s",
                "p50 ms",
                "p99 ms",
                "mean batch",
                "model busy",
                "errors",
                *(["images/s meanwhile"] if background else []),
            ],
            rows,
        ),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
