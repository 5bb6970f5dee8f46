"""Where a request's CPU goes: py-spy samples every thread of the server while a closed-loop load
runs against the simulated accelerator; each sample is put in the stage of its innermost
recognizable frame, and the CPU per request is split by those shares.

    python -m benchmarks.profile --kind image --workers 1 --concurrency 64
    python -m benchmarks.profile --all --out BENCHMARKS.md   # both kinds, W = 1 and 2, recorded

(py-spy comes with the development tools; it needs permission to read the server's memory, as
root or with ptrace allowed.) Samples are of running threads only (py-spy's default), so a
sleeping simulated call or an idle loop do not count. Frames inside C code called from Python
count for the Python frame that called it; the event loop's own C code (uvloop) shows as
"event loop".
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (
    MODEL_PATH_ONLY,
    command_line,
    cpu_name,
    record_section,
    searches,
    table,
    thumbnails,
)
from benchmarks.counters import tree_cpu_s
from benchmarks.load import run_load
from photofield_ai.testing.server import descendants, start_server

# Stage ← fragments of its frames ("function (path:line)" in py-spy's raw output), first match
# from the innermost frame outwards.
STAGES = (
    ("JPEG decode (libjpeg-turbo)", ("turbojpeg.py",)),
    ("resize (OpenCV; Pillow when shrinking)", ("resize (", "resize_bicubic (")),
    ("normalize (float32 CHW)", ("normalize (",)),
    ("decode plumbing (header, budget, EXIF)", ("imaging/", "PIL/", "clip/preprocess.py")),
    ("tokenize", ("clip/tokenizer.py", "ftfy")),
    ("multipart", ("api/multipart.py", "multipart", "formparsers.py")),
    ("wire encoding (base64, norms)", ("clip/wire.py",)),
    ("JSON response", ("json/", "starlette/responses.py")),
    (
        "IPC (shared memory, frames)",
        ("serving/ipc.py", "serving/remote.py", "serving/inference.py"),
    ),
    ("batcher (queue, futures, stacking)", ("batcher/", "shape_base.py")),
    ("simulated model call", ("runtime/simulated.py",)),
    ("metrics", ("prometheus_client",)),
    ("middleware", ("api/middleware.py",)),
    ("handlers", ("photofield_ai/api/",)),
    ("Starlette (routing, request)", ("starlette/",)),
    ("HTTP (uvicorn, httptools)", ("uvicorn/", "api/server.py")),
    ("thread hand-offs", ("concurrent/futures", "threading.py", "queue.py", "anyio/")),
    ("event loop", ("asyncio/", "uvloop", "selectors.py", "runners.py", "threads.py")),
)


def stage(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for name, fragments in STAGES:
            if any(f in frame for f in fragments):
                return name
    return "other"


def profile(kind: str, workers: int, concurrency: int, seconds: float) -> tuple[list[str], float]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workdir = Path(tempfile.mkdtemp(prefix="profile-"))
    server = start_server(
        workdir,
        None,
        None,
        60,
        PHOTOFIELD_AI_VISUAL_MODEL="simulated://visual",
        PHOTOFIELD_AI_TEXTUAL_MODEL="simulated://textual",
        PHOTOFIELD_AI_WORKERS=str(workers),
        **MODEL_PATH_ONLY,
    )
    workload = thumbnails() if kind == "image" else searches()
    try:
        run_load(server.url, workload, concurrency, 1.0, 2.0)
        pids = [server.process.pid, *descendants(server.process.pid)]
        outputs = [workdir / f"{pid}.txt" for pid in pids]
        spies = [
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "-p",
                    str(pid),
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "-r",
                    "200",
                    "-d",
                    str(int(seconds)),
                    "--nonblocking",
                    "--threads",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, out in zip(pids, outputs, strict=True)
        ]
        before = tree_cpu_s(server.process.pid) or 0.0
        result = run_load(server.url, workload, concurrency, 0.0, seconds)
        cpu_ms = 1000 * ((tree_cpu_s(server.process.pid) or 0.0) - before) / len(result.latencies)
        for process in spies:
            process.wait()
    finally:
        server.stop()
    samples: collections.Counter[str] = collections.Counter()
    for out in outputs:
        if not out.exists():
            continue
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples[stage(stack)] += int(count)
    total = sum(samples.values()) or 1
    rows = [
        [name, f"{100 * n / total:.0f} %", f"{cpu_ms * n / total:.2f}"]
        for name, n in samples.most_common()
    ]
    title = (
        f"{'256-px JPEG' if kind == 'image' else 'one text'}, W={workers}, C={concurrency}: "
        f"{result.requests_per_s:.0f} req/s, {cpu_ms:.2f} ms of CPU per request"
    )
    return [f"**{title}**", "", *table(["stage", "share of samples", "ms / request"], rows)], cpu_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["image", "text"], default="image")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--all", action="store_true", help="both kinds at W = 1 and 2")
    parser.add_argument("--out", type=Path, help="record in this BENCHMARKS.md")
    args = parser.parse_args(argv)
    runs = (
        [(kind, w) for kind in ("image", "text") for w in (1, 2)]
        if args.all
        else [(args.kind, args.workers)]
    )
    lines: list[str] = []
    for kind, workers in runs:
        lines += profile(kind, workers, args.concurrency, args.seconds)[0]
    print("\n".join(lines))
    if args.out is not None:
        command = command_line("profile", argv)
        record_section(
            args.out,
            "profile",
            [
                "## Where a request's CPU goes",
                "",
                f"`{command}`, {datetime.date.today().isoformat()}, {cpu_name()}, "
                f"{os.cpu_count()} cores. The server on the simulated accelerator, closed loop, "
                f"{args.seconds:g} s sampled with py-spy at 200 Hz over every thread of every "
                "server process; each sample goes to the stage of its innermost recognizable "
                "frame, and the CPU per request (all processes, measured) is split by those "
                "shares. The load generator shares the machine; py-spy itself costs a little.",
                "",
                *lines,
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
