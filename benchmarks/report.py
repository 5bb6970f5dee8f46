"""The report: the targets table from every section's results, the run's header, and writing
BENCHMARKS.md while keeping the sections other commands write into it."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.accelerator import Row, lone_overhead_ms
from benchmarks.ceiling import in_flight_key
from benchmarks.common import NOISE_NOTE, Config, cpu_name, fmt_ms, gpu_name, table
from benchmarks.http_tables import LoneRequest
from benchmarks.load import LoadResult
from photofield_ai import __version__
from photofield_ai.testing.generate import PRESETS

# Sections other commands write into the same file (benchmarks.soak, benchmarks.profile;
# comparisons recorded with benchmarks.compare) and a rerun of this suite keeps.
KEPT_SECTIONS = (
    "compare",
    "profile",
    "soak",
    "accelerator-repeat",
    "versions",
    "shared-weights",
    "in-flight",
    "lone",
)


def summary(
    ceilings: dict[str, float],
    results: dict[tuple[str, str, int], LoadResult],
    dtype: str,
    lone: dict[str, LoneRequest],
    accelerator: list[Row] | None = None,
    gpu: bool = False,
    mixed: dict[str, LoadResult] | None = None,
) -> list[str]:
    lines = ["## Targets", ""]
    rows = []
    for label, kind, c in (
        ("256-px JPEG", "visual", 4),
        ("256-px JPEG", "visual", 32),
        ("text", "textual", 16),
    ):
        r = results.get((label, "on", c))
        if r is None:
            continue
        ceiling = ceilings[f"{kind}-{dtype}"]
        measured = (
            f"{r.requests_per_s:.1f} / {ceiling:.1f} = {100 * r.requests_per_s / ceiling:.0f} %"
        )
        within = ceilings.get(in_flight_key(kind, dtype, c), ceiling)
        if within < ceiling:
            measured += (
                f" (of the best with ≤ {c} items in flight, {within:.1f}: "
                f"{100 * r.requests_per_s / within:.0f} %)"
            )
        rows.append([f"{label} req/s at C={c} vs {kind} ceiling", measured, "≥ 95 %"])
    for kind, lone_request in lone.items():
        p50 = lone_request.http.percentile(50)
        best = lone_request.best_bare_s
        layouts = ", ".join(f"{n} {fmt_ms(v)} ms" for n, v in lone_request.bare_p50_s.items())
        rows.append(
            [
                f"{'256-px JPEG' if kind == 'visual' else 'one text'} p50 at C=1 vs the best "
                "bare batch-1 call (paired request by request)",
                f"{fmt_ms(p50)} ms vs {fmt_ms(best)} ms ({(p50 - best) * 1000:+.1f} ms; "
                f"bare calls: {layouts})",
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
    rows += accelerator_targets(accelerator or [], gpu)
    if mixed is not None:
        ratio = mixed["search"].percentile(99) / mixed["idle"].percentile(50)
        rows += [
            [
                "mixed Photofield load: search p99 / idle p50",
                f"{ratio:.2f}",
                "≤ 3",
            ],
            [
                "mixed Photofield load: slowest /faces answer",
                f"{fmt_ms(max(mixed['faces'].latencies, default=0.0))} ms",
                "< 30,000 ms (Photofield's timeout)",
            ],
            [
                "mixed Photofield load: thumbnails keep flowing",
                f"{mixed['thumbs'].requests_per_s:.2f} req/s, p99 "
                f"{fmt_ms(mixed['thumbs'].percentile(99))} ms",
                "not starved",
            ],
        ]
    lines += table(["target", "measured", "goal"], rows)
    lines += [
        NOISE_NOTE,
        "",
    ]
    return lines


def header(cfg: Config, command: str, minutes: float, dtype: str) -> list[str]:
    gpu = gpu_name() if cfg.gpu else None
    flops = PRESETS["vit-b-32"].visual.flops_per_item() / 1e9
    text_flops = PRESETS["vit-b-32"].textual.flops_per_item() / 1e9
    return [
        "# Benchmarks" if not cfg.gpu else "# GPU benchmarks",
        "",
        f"- Command: `{command.strip()}` ({minutes:.1f} min)",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores"
        + (f", GPU {gpu}" if gpu else ", no GPU"),
        f"- Software: photofield-ai {__version__}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}, providers "
        f"{', '.join(cfg.providers)}",
        f"- Models: generated `vit-b-32` (CLIP ViT-B/32 layer shapes, random weights; "
        f"{flops:.2f} GFLOPs per image, {text_flops:.2f} per text), {dtype} for the HTTP runs"
        + (
            "; the server's visual model rewritten to take uint8 pixels "
            "(PHOTOFIELD_AI_PIXEL_INPUT, on with an accelerator)"
            if cfg.gpu
            else ""
        ),
        "- The load generator runs on the same machine as the server and takes CPU from it.",
        "",
    ]


def write(path: Path, report: list[str]) -> None:
    """Write the report, keeping the KEPT_SECTIONS of the file it replaces."""
    text = "\n".join(report)
    if path.exists():
        old = path.read_text()
        for name in KEPT_SECTIONS:
            start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
            if start in old and end in old:
                kept = old[old.index(start) : old.index(end) + len(end)]
                text = text.rstrip("\n") + "\n\n" + kept + "\n"
    path.write_text(text)


def accelerator_targets(rows: list[Row], gpu: bool = False) -> list[list[str]]:
    """The accelerator-class targets, from section 5 (the simulated accelerator on a CPU
    machine; on a GPU only the end-to-end images/s)."""
    out: list[list[str]] = []
    images = [r for r in rows if r.label == "256-px JPEG"]
    if gpu and images:
        best = max(images, key=lambda r: r.result.requests_per_s)
        out.append(
            [
                "ViT-B/32 float16 thumbnails end to end on the GPU (best W, C)",
                f"{best.result.requests_per_s:.0f} images/s (W={best.workers}, "
                f"C={best.concurrency})",
                "≥ 5,000 images/s",
            ]
        )
    by_key = {(r.label, r.workers, r.concurrency): r for r in rows}
    for (label, w, c), r in sorted(by_key.items()):
        cpu, loop = r.cpu_ms(), r.loop_ms()
        if c == 64 and label == "256-px JPEG" and cpu is not None and loop is not None:
            out.append(
                [
                    f"256-px JPEG CPU per request at C=64, W={w}",
                    f"{cpu:.2f} ms, of which HTTP loops {loop:.2f} ms",
                    "≤ 2.5 ms, loop ≤ 0.7 ms",
                ]
            )
        if c == 64 and label == "one text" and cpu is not None:
            out.append([f"one text CPU per request at C=64, W={w}", f"{cpu:.2f} ms", "≤ 0.8 ms"])
        if c == 1 and not gpu:
            out.append(
                [
                    f"{label}: a lone request's overhead (C=1 p50 − the simulated call), W={w}",
                    f"{lone_overhead_ms(r):.2f} ms",
                    "≤ 2 ms",
                ]
            )
    return out
