"""Section 6: Photofield's real load on a CPU, all at once — 4 thumbnail clients
(`concurrent_color_loads`), 8 `/faces` clients sending original photos (12-Mpx JPEGs and some
HEIC, `concurrent_meta_loads`) and one searcher — on the default settings, with generated
ViT-B/32 models and shape-true face models (testing.face_models).

    python -m benchmarks.photofield [--seconds 10]

runs it alone (the mixed window is three times --seconds, as in the full suite); PYTHONPATH
pointing at another checkout's `src` runs that code's server.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import io
import sys
import urllib.request
from pathlib import Path

from benchmarks.common import (
    Config,
    command_line,
    cpu_name,
    fmt_ms,
    searches,
    table,
    thumbnails,
)
from benchmarks.load import LoadResult, Workload, run_load, run_together
from photofield_ai.testing import face_models
from photofield_ai.testing.generate import generate
from photofield_ai.testing.server import ServerProcess, start_server
from tests.face_fakes import faces_env
from tests.images import jpeg, photo
from tests.probes import parse_metric

THUMBNAIL_CLIENTS, FACE_CLIENTS = 4, 8
# A person searching: one query, then a second reading the results (a searcher firing queries
# back to back would hold indexing behind search-first priority all the time).
SEARCH_THINK_S = 1.0


def originals() -> Workload:
    """Phone-sized originals: 12-Mpx JPEGs and one HEIC in four."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    photos = [jpeg(4000, 3000, quality=90, seed=i) for i in range(3)]
    buf = io.BytesIO()
    photo(4032, 3024, seed=9).save(buf, "HEIF", quality=80)
    return Workload("image", (*photos, buf.getvalue()), path="/faces")


def _server(cfg: Config, dtype: str, **env: str) -> ServerProcess:
    visual, textual = generate("vit-b-32", dtype, cfg.workdir / "models")
    detector, recognizer = face_models.generate(cfg.workdir / "models")
    return start_server(
        cfg.workdir / "servers",
        visual,
        textual,
        600,
        **{
            **cfg.server_env,
            **faces_env(detector, recognizer),
            **env,
        },
    )


def _row(label: str, clients: int, r: LoadResult) -> list[str]:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"
    return [
        label,
        str(clients),
        f"{r.requests_per_s:.2f}",
        fmt_ms(r.percentile(50)),
        fmt_ms(r.percentile(99)),
        errors,
    ]


def mixed_load(cfg: Config, dtype: str) -> tuple[list[str], dict[str, LoadResult]]:
    server = _server(cfg, dtype)
    measure_s = cfg.measure_s * 3  # faces take seconds each: a longer window
    try:
        idle = run_load(server.url, searches(), 1, cfg.warmup_s, cfg.measure_s)
        thumbs, faces, search = asyncio.run(
            run_together(
                server.url,
                [
                    (thumbnails(), THUMBNAIL_CLIENTS),
                    (originals(), FACE_CLIENTS),
                    (dataclasses.replace(searches(), think_s=SEARCH_THINK_S), 1),
                ],
                cfg.warmup_s * 2,
                measure_s,
            )
        )
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            late = parse_metric(
                response.read().decode(), "photofield_ai_faces_deadline_exceeded_total"
            )
    finally:
        server.stop()
    ratio = search.percentile(99) / idle.percentile(50)
    print(
        f"mixed: thumbnails {thumbs.requests_per_s:.2f}/s, faces {faces.requests_per_s:.2f}/s "
        f"(p99 {fmt_ms(faces.percentile(99))} ms), search p99/idle p50 {ratio:.2f}",
        flush=True,
    )
    lines = [
        "## 6. Photofield's real load on a CPU, all at once",
        "",
        f"{THUMBNAIL_CLIENTS} clients sending 256-px thumbnails (Photofield's "
        f"`concurrent_color_loads`), {FACE_CLIENTS} sending original photos to `/faces` "
        "(three 12-Mpx JPEGs and a 12-Mpx HEIC in turn; `concurrent_meta_loads`), and one "
        f"person searching (a query, then {SEARCH_THINK_S:g} s reading the results), together for "
        f"{measure_s:.0f} s, default settings; generated ViT-B/32 {dtype} and the shape-true "
        "face models (`python -m photofield_ai.testing.face_models`: RetinaFace MobileNet-v2 "
        "at 640², EdgeFace-XXS-sized at 112², random weights; 1-6 'faces' per photo). "
        "Latencies in ms.",
        "",
    ]
    lines += table(
        ["endpoint", "clients", "req/s", "p50", "p99", "errors"],
        [
            _row("search alone (idle server)", 1, idle),
            _row("/image-embeddings (thumbnails)", THUMBNAIL_CLIENTS, thumbs),
            _row("/faces (originals)", FACE_CLIENTS, faces),
            _row("/text-embeddings (search)", 1, search),
        ],
    )
    lines += [
        f"Search p99 under this load / idle p50 = **{ratio:.2f}** (target ≤ 3). "
        f"`/faces` answered past the deadline "
        f"(`photofield_ai_faces_deadline_exceeded_total`): {late:.0f}; slowest `/faces` answer "
        f"{fmt_ms(max(faces.latencies, default=0.0))} ms (Photofield's timeout: 30,000).",
        "",
    ]
    return lines, {"idle": idle, "thumbs": thumbs, "faces": faces, "search": search}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="the idle-search window")
    args = parser.parse_args(argv)
    cfg = Config(False, False, Path(".bench"), args.seconds, 2.0, 1)
    lines, _ = mixed_load(cfg, "float32")
    print(f"`{command_line('photofield', argv)}`, {datetime.date.today()}, {cpu_name()}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
