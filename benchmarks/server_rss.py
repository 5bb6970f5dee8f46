"""The server's resident memory on the generated ViT-B/32 float32 models, after start-up and
after each step of a load, for one or more checkouts of the code (a `git worktree` of another
revision at PYTHONPATH=<tree>/src): what a change does to memory, with nothing else changed.

    python -m benchmarks.server_rss base=/tmp/base/src head=src

Each version runs alone (RSS is per process tree and one server's load would slow the other):
started, then 15 s of thumbnails at C=4, 25 s at C=32 and 10 s of texts at C=4, RSS of every
server process summed after each step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.common import searches, table, thumbnails
from benchmarks.load import Workload, run_load
from benchmarks.soak import rss_mb
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import descendants, start_server

STEPS: tuple[tuple[str, Workload, int, float], ...] = (
    ("thumbnails C=4, 15 s", thumbnails(), 4, 15.0),
    ("thumbnails C=32, 25 s", thumbnails(), 32, 25.0),
    ("texts C=4, 10 s (the text cache answers repeats)", searches(), 4, 10.0),
)


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for process in (pid, *descendants(pid)):
        try:
            total += rss_mb(process)
        except OSError:
            continue  # gone between listing and reading
    return total


def measure(src: Path, workdir: Path) -> list[str]:
    visual, textual = generate("vit-b-32", "float32", workdir / "models")
    server = start_server(
        Path(tempfile.mkdtemp(dir=workdir)), visual, textual, 600, PYTHONPATH=str(src.resolve())
    )
    try:
        cells = [f"{tree_rss_mb(server.process.pid):.0f}"]
        for _, workload, concurrency, seconds in STEPS:
            result = run_load(server.url, workload, concurrency, 2.0, seconds)
            cells.append(f"{tree_rss_mb(server.process.pid):.0f} ({result.requests_per_s:.1f}/s)")
        return cells
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", help="name=path/to/src")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = parser.parse_args(argv)
    rows = []
    for spec in args.versions:
        name, sep, src = spec.partition("=")
        if not sep:
            raise SystemExit(f"not name=path: {spec!r}")
        rows.append([name, *measure(Path(src), args.workdir)])
    header = ["code", "started", *(step[0] for step in STEPS)]
    print("RSS of the server's processes, MB (requests/s of each step)\n")
    print("\n".join(table(header, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
