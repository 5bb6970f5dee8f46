"""Soak test: hours of mixed Photofield traffic, with bad inputs, against a real server.

Reports requests by status, 5xx count and the server's RSS after warm-up and at the end, and
records the result in BENCHMARKS.md (section between the soak markers).

    python -m benchmarks.soak --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.common import command_line, cpu_name, record_section, thumbnails
from photofield_ai import __version__
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import start_server
from tests.images import jpeg


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bad_requests(good: bytes) -> list[tuple[str, dict[str, object]]]:
    rng = random.Random(0)
    return [
        ("/image-embeddings", {"files": {"image": ("r.jpg", rng.randbytes(3000))}}),
        ("/image-embeddings", {"files": {"image": ("t.jpg", good[: len(good) // 2])}}),
        ("/image-embeddings", {"files": {"image": ("e.jpg", b"")}}),
        ("/image-embeddings", {"content": b"not multipart"}),
        ("/text-embeddings", {"content": b'{"texts": [1, 2]}'}),
        ("/text-embeddings", {"content": b"{nope"}),
    ]


@dataclass
class SoakResult:
    statuses: Counter[str]
    rss_start: float
    rss_end: float
    rss_peak: float
    samples: list[tuple[float, float]]  # (seconds since start, RSS MB)


async def soak(url: str, pid: int, seconds: float, warmup_s: float) -> SoakResult:
    thumbs = thumbnails().payloads
    photos = [jpeg(4000, 3000, seed=i) for i in range(2)]
    bad = bad_requests(thumbs[0])
    statuses: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds
    samples: list[tuple[float, float]] = []

    async def worker(kind: str, client: httpx.AsyncClient) -> None:
        rng = random.Random(hash(kind))
        while time.monotonic() < stop_at:
            try:
                if kind == "image":
                    data = rng.choice(photos) if rng.random() < 0.05 else rng.choice(thumbs)
                    r = await client.post(
                        url + "/image-embeddings", files={"image": ("p.jpg", data, "image/jpeg")}
                    )
                elif kind == "text":
                    r = await client.post(
                        url + "/text-embeddings", json={"texts": [f"photo of {rng.random()}"]}
                    )
                    await asyncio.sleep(rng.uniform(0, 0.5))
                else:
                    path, kwargs = rng.choice(bad)
                    r = await client.post(url + path, **kwargs)  # type: ignore[arg-type]
                    await asyncio.sleep(rng.uniform(0, 0.2))
                statuses[f"{kind} {r.status_code}"] += 1
            except httpx.HTTPError as exc:
                statuses[f"{kind} {type(exc).__name__}"] += 1

    async def sampler() -> None:
        started = time.monotonic()
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - started, rss_mb(pid)))
            await asyncio.sleep(10)

    async with httpx.AsyncClient(timeout=120) as client:
        kinds = ["image"] * 16 + ["text"] * 2 + ["bad"] * 2
        await asyncio.gather(sampler(), *(worker(k, client) for k in kinds))
    after_warmup = next((rss for t, rss in samples if t >= warmup_s), samples[0][1])
    return SoakResult(statuses, after_warmup, rss_mb(pid), max(rss for _, rss in samples), samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, default=1)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = parser.parse_args(argv)
    visual, textual = generate("tiny", "float32", args.workdir / "models")
    server = start_server(args.workdir / "soak", visual, textual)
    try:
        result = asyncio.run(
            soak(server.url, server.process.pid, args.minutes * 60, args.warmup_minutes * 60)
        )
    finally:
        exit_code = server.stop()
    statuses = result.statuses
    total = sum(statuses.values())
    server_errors = sum(n for k, n in statuses.items() if k.split()[1].startswith("5"))
    start, end = result.rss_start, result.rss_end
    growth = 100 * (end - start) / start
    command = command_line("soak", argv)
    report = [
        "## Soak",
        "",
        f"- Command: `{command}`, {datetime.date.today().isoformat()}, {cpu_name()}, "
        f"{os.cpu_count()} cores, photofield-ai {__version__}, generated `tiny` float32 models "
        "(many requests per second, so leaks show sooner)",
        f"- Traffic: 16 indexing workers (256-px JPEGs, 5 % 12-MP photos), 2 searchers, "
        f"2 clients sending bad inputs; {args.minutes:g} minutes",
        f"- Requests: {total}; 5xx: **{server_errors}**; server exit code after SIGTERM: "
        f"{exit_code}",
        f"- RSS after {args.warmup_minutes:g} min warm-up: {start:.0f} MB; at the end: "
        f"{end:.0f} MB (growth **{growth:+.1f} %**, target < 5 %); peak {result.rss_peak:.0f} MB",
        "- RSS over time (MB): "
        + ", ".join(f"{t / 60:.0f} min {rss:.0f}" for t, rss in result.samples[::30]),
        "",
        "| client, status | requests |",
        "|---|---|",
        *(f"| {k} | {n} |" for k, n in sorted(statuses.items())),
        "",
    ]
    record_section(args.out, "soak", report)
    print("\n".join(report))
    return 0 if server_errors == 0 and growth < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
