"""Section 7: what the features beyond the peers cost and save — the text-embedding cache
(a repeated search against a first-time one and the HTTP floor; memory per 10,000 entries) and
idle unload (memory returned; the first request after it).

    python -m benchmarks.features [--workdir .bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

from benchmarks.common import Config, cpu_name, start, table
from benchmarks.soak import rss_mb
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import start_server
from tests.conftest import wait_until
from tests.images import jpeg
from tests.probes import metric

CACHE_ENTRIES = 10_000
TEXTS_PER_REQUEST = 250


def _p50_ms(client: httpx.Client, send: object, n: int) -> float:
    times = []
    for i in range(n):
        started = time.perf_counter()
        r = send(client, i)  # type: ignore[operator]
        times.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
    return statistics.median(times) * 1000


def cache_latency(cfg: Config) -> list[list[str]]:
    """Lone requests, one after another, on ViT-B/32-shaped models."""
    srv = start(cfg, "float32", PHOTOFIELD_AI_TEXT_CACHE_SIZE="10000")  # the default
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            _p50_ms(client, lambda c, i: c.post("/text-embeddings", json={"texts": [f"w{i}"]}), 5)
            miss = _p50_ms(
                client,
                lambda c, i: c.post("/text-embeddings", json={"texts": [f"a photo of {i} cats"]}),
                40,
            )
            hit = _p50_ms(
                client,
                lambda c, i: c.post("/text-embeddings", json={"texts": ["beach sunset"]}),
                200,
            )
            floor = _p50_ms(client, lambda c, i: c.get("/health"), 200)
    finally:
        srv.stop()
    return [
        ["first-time search (the model runs)", f"{miss:.2f}"],
        ["repeated search (a cache hit)", f"{hit:.2f}"],
        ["GET /health (the HTTP floor)", f"{floor:.2f}"],
    ]


def cache_memory(cfg: Config) -> list[list[str]]:
    """The same 10,000 distinct texts through a server with the cache and one without: the RSS
    difference is what the entries hold (512-d float32 outputs; tiny models, since an entry's
    size depends only on the output)."""
    visual, textual = generate("tiny", "float32", cfg.workdir / "models")
    rows = []
    rss = {}
    for size in (CACHE_ENTRIES, 0):
        srv = start_server(
            cfg.workdir / "servers",
            visual,
            textual,
            600,
            **{**cfg.server_env, "PHOTOFIELD_AI_TEXT_CACHE_SIZE": str(size)},
        )
        try:
            with httpx.Client(base_url=srv.url, timeout=120) as client:
                for start_at in range(0, CACHE_ENTRIES, TEXTS_PER_REQUEST):
                    texts = [
                        f"photo number {i}" for i in range(start_at, start_at + TEXTS_PER_REQUEST)
                    ]
                    assert client.post("/text-embeddings", json={"texts": texts}).status_code == 200
            entries = metric(srv.url, "photofield_ai_text_cache_entries")
            rss[size] = rss_mb(srv.process.pid)
            rows.append(
                [f"cache of {size}" if size else "cache off", f"{entries:.0f}", f"{rss[size]:.0f}"]
            )
        finally:
            srv.stop()
    rows.append(["difference per 10,000 entries", "", f"{rss[CACHE_ENTRIES] - rss[0]:.1f}"])
    return rows


def idle_unload(cfg: Config) -> list[list[str]]:
    srv = start(cfg, "float32", PHOTOFIELD_AI_MODEL_IDLE_UNLOAD_S="3")
    photo = jpeg(256, 192, seed=1)
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as client:

            def image(c: httpx.Client, i: int) -> httpx.Response:
                return c.post("/image-embeddings", files={"image": ("p.jpg", photo)})

            def text(c: httpx.Client, i: int) -> httpx.Response:
                return c.post("/text-embeddings", json={"texts": [f"a dog {i}"]})

            warm_image = _p50_ms(client, image, 5)
            warm_text = _p50_ms(client, text, 5)
            loaded = rss_mb(srv.process.pid)
            for model in ("visual", "textual"):
                wait_until(
                    lambda m=model: metric(srv.url, "photofield_ai_model_loaded", model=m) == 0,  # type: ignore[misc]
                    f"{model} unloaded",
                    timeout_s=60,
                )
            unloaded = rss_mb(srv.process.pid)
            first_image = _p50_ms(client, image, 1)
            first_text = _p50_ms(client, text, 1)
            reloaded = rss_mb(srv.process.pid)
    finally:
        srv.stop()
    return [
        ["RSS with both models loaded (MB)", f"{loaded:.0f}"],
        ["RSS after idle unload (MB)", f"{unloaded:.0f}"],
        ["memory returned (MB)", f"{loaded - unloaded:.0f}"],
        ["RSS after one image and one text request (MB)", f"{reloaded:.0f}"],
        ["image request, warm (ms, p50 of 5)", f"{warm_image:.0f}"],
        ["first image request after unload (ms)", f"{first_image:.0f}"],
        ["text request, warm (ms, p50 of 5)", f"{warm_text:.0f}"],
        ["first text request after unload (ms)", f"{first_text:.0f}"],
    ]


def features_section(cfg: Config) -> list[str]:
    lines = [
        "## 7. Beyond the peers: the text cache and idle unload",
        "",
        "Lone requests one after another on ViT-B/32-shaped float32 models (default settings). "
        "A cache hit skips tokenizing's queue hop and the model; what is left is HTTP and JSON.",
        "",
        *table(["request", "p50 (ms)"], cache_latency(cfg)),
        "Memory the cache holds: the same 10,000 distinct texts through a server with "
        f"`PHOTOFIELD_AI_TEXT_CACHE_SIZE={CACHE_ENTRIES}` and one with `0` (tiny models: an "
        "entry's size depends only on the 512-d output). Per worker process.",
        "",
        *table(["server", "entries", "RSS (MB)"], cache_memory(cfg)),
        "Idle unload with `PHOTOFIELD_AI_MODEL_IDLE_UNLOAD_S=3` (ViT-B/32-shaped float32, the "
        "CPU's adaptive layout: two sessions per model). The first request after an unload "
        "loads the session it runs on (a lone request: the every-core one) and waits for it.",
        "",
        *table(["", "value"], idle_unload(cfg)),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = parser.parse_args(argv)
    cfg = Config(False, False, args.workdir, 0, 0, 1)
    print(f"CPU: {cpu_name()}")
    print("\n".join(features_section(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
