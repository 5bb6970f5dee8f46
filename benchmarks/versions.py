"""Compare two versions of the code on this machine: the server from a git revision (checked out
into a temporary worktree) against the server from this working tree, on the simulated
accelerator, in alternating rounds so that the drift of a shared machine hits both alike. What a
code change did to the server's CPU per request, with nothing else changed.

    python -m benchmarks.versions --base 14f1e60 --kind image --workers 1,2 --concurrency 1,64 \
        --out BENCHMARKS.md

Prints a markdown table: req/s and the server's CPU per request (all its processes) over the
measured windows, and the CPU per request of each round; --out records it in its own section of
BENCHMARKS.md (the last comparison recorded; a full run keeps it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.accelerator import SIMULATED
from benchmarks.common import (
    MODEL_PATH_ONLY,
    command_line,
    cpu_name,
    parse_assignments,
    record_section,
    searches,
    table,
    thumbnails,
)
from benchmarks.counters import inference_process_cpu_s, tree_cpu_s
from benchmarks.load import run_load
from photofield_ai.testing.server import ServerProcess, start_server


@dataclass
class Tally:
    cpu_s: float = 0.0
    inference_s: float = 0.0
    requests: int = 0
    seconds: float = 0.0
    per_round_ms: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def _server(workdir: Path, src: Path, workers: int, env: dict[str, str]) -> ServerProcess:
    return start_server(
        workdir,
        None,
        None,
        120,
        PYTHONPATH=str(src),
        PHOTOFIELD_AI_WORKERS=str(workers),
        **{**SIMULATED, **MODEL_PATH_ONLY, **env},  # env may set a model (--head-env)
    )


def compare(
    base_src: Path,
    head_src: Path,
    kind: str,
    workers: int,
    concurrency: int,
    rounds: int,
    s: float,
    head_env: dict[str, str] | None = None,
) -> list[list[str]]:
    workload = thumbnails() if kind == "image" else searches()
    workdir = Path(tempfile.mkdtemp(prefix="versions-"))
    servers: dict[str, ServerProcess] = {}
    tallies = {name: Tally() for name in ("base", "head")}
    try:
        # Started inside the try: a head that fails to start must not leave the base running.
        servers["base"] = _server(workdir / "base", base_src, workers, {})
        servers["head"] = _server(workdir / "head", head_src, workers, head_env or {})
        for server in servers.values():
            run_load(server.url, workload, concurrency, 1.0, 1.0)  # warm up
        for _ in range(rounds):
            for name, server in servers.items():
                pid = server.process.pid
                before = tree_cpu_s(pid) or 0.0
                inference_before = inference_process_cpu_s(pid)
                result = run_load(server.url, workload, concurrency, 0.0, s)
                cpu = (tree_cpu_s(pid) or 0.0) - before
                n = len(result.latencies)
                tally = tallies[name]
                tally.cpu_s += cpu
                tally.inference_s += inference_process_cpu_s(pid) - inference_before
                tally.requests += n
                tally.seconds += s
                tally.per_round_ms.append(1000 * cpu / max(1, n))
                tally.latencies += result.latencies
    finally:
        for server in servers.values():
            server.stop()
    return [
        [
            name,
            str(workers),
            str(concurrency),
            f"{t.requests / t.seconds:.0f}",
            f"{1000 * float(np.percentile(t.latencies, 50)):.2f}" if t.latencies else "-",
            f"{1000 * t.cpu_s / max(1, t.requests):.2f}",
            f"{1000 * t.inference_s / max(1, t.requests):.2f}" if workers > 1 else "-",
            ", ".join(f"{ms:.2f}" for ms in t.per_round_ms),
        ]
        for name, t in tallies.items()
    ]


def _git(root: Path, *args: str, check: bool = True) -> str:
    command = ["git", "-C", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, check=check).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--kind", choices=["image", "text"], default="image")
    parser.add_argument("--workers", default="1", help="comma-separated W values")
    parser.add_argument("--concurrency", default="64", help="comma-separated C values")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="window per round")
    parser.add_argument(
        "--head-env", default="", help="VAR=value,... for the head's server (e.g. MALLOC_*)"
    )
    parser.add_argument("--out", type=Path, help="record in this BENCHMARKS.md")
    args = parser.parse_args(argv)
    head_env = parse_assignments(args.head_env)
    root = Path(__file__).resolve().parent.parent
    head = _git(root, "rev-parse", "--short", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    checkout = Path(tempfile.mkdtemp(prefix="versions-base-")) / "tree"
    _git(root, "worktree", "add", "--detach", "-q", str(checkout), args.base)
    rows: list[list[str]] = []
    try:
        for w in (int(v) for v in args.workers.split(",")):
            for c in (int(v) for v in args.concurrency.split(",")):
                rows += compare(
                    checkout / "src",
                    root / "src",
                    args.kind,
                    w,
                    c,
                    args.rounds,
                    args.seconds,
                    head_env,
                )
    finally:
        _git(root, "worktree", "remove", "--force", str(checkout), check=False)
    label = "256-px JPEG" if args.kind == "image" else "one text"
    header = [
        "code",
        "W",
        "C",
        "req/s",
        "p50 (ms)",
        "CPU / request (ms)",
        "of which the inference process (ms)",
        "per round (ms)",
    ]
    command = command_line("versions", argv)
    lines = [
        f"`{command}`, {datetime.date.today().isoformat()}: {label} on the simulated "
        f"accelerator, {cpu_name()}, {os.cpu_count()} cores; base = {args.base}, head = "
        f"{head}{' + uncommitted changes' if dirty else ''}"
        f"{' run with ' + args.head_env if head_env else ''}; {args.rounds} alternating rounds "
        f"of {args.seconds:g} s per version, W and C. CPU per request is every server "
        "process's CPU time in the measured windows over the requests answered in them; with "
        "W > 1, the inference process's share (one process: 1000 ÷ it bounds the req/s of "
        "any number of workers).",
        "",
        *table(header, rows),
    ]
    print("\n".join(lines))
    if args.out is not None:
        record_section(
            args.out, "versions", ["## Two versions of the code, side by side", "", *lines]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
