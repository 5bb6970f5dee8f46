"""The benchmark suite: model-only ceiling, end-to-end HTTP with batching on and off, search
latency while a library indexes, one process's limit, and accelerator-class throughput with one
and several processes. Writes a markdown report (BENCHMARKS.md).

    make bench                      # CPU, generated ViT-B/32 models, ~16 minutes on 2 cores
    python -m benchmarks.run --gpu  # CUDA + onnxruntime-gpu, float16; sized for < 5 minutes
                                    # (an estimate: it has not run on a GPU yet)
    python -m benchmarks.run --quick --out /tmp/bench.md   # a smoke run of everything
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import onnxruntime as ort

from benchmarks import report
from benchmarks.accelerator import accelerator_table
from benchmarks.ceiling import model_ceiling
from benchmarks.common import Config, command_line
from benchmarks.features import features_section
from benchmarks.http_tables import http_tables, lone_request_latency, text_under_load
from benchmarks.photofield import mixed_load
from benchmarks.process import process_ceiling
from photofield_ai.runtime.cpus import usable_cpus


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
    if args.gpu and "CUDAExecutionProvider" not in ort.get_available_providers():
        # Otherwise ONNX Runtime warns and runs everything on the CPU under a GPU heading.
        parser.exit(
            2,
            "--gpu needs ONNX Runtime's CUDA provider; available here: "
            f"{', '.join(ort.get_available_providers())}. Install the GPU build with "
            "`sh deploy/install.sh --gpu --dev .venv`.\n",
        )
    quick = args.quick
    cfg = Config(
        gpu=args.gpu,
        quick=quick,
        workdir=args.workdir,
        measure_s=args.seconds or (3.0 if quick else 10.0 if not args.gpu else 4.0),
        warmup_s=1.0 if quick or args.gpu else 2.0,
        client_processes=args.client_processes or (min(8, os.cpu_count() or 1) if args.gpu else 1),
    )
    dtype = "float16" if args.gpu else "float32"
    if args.gpu:
        dtypes, batch_sizes = ["float16"], [1, 2, 4, 8, 16, 32, 64, 128, 256]
        image_conc, photo_conc, text_conc = [1, 8, 32, 64, 256, 512], [8, 32, 64], [1, 16]
    elif quick:
        dtypes, batch_sizes = ["float32"], [1, 4, 8]
        image_conc, photo_conc, text_conc = [1, 4], [8], [1]
    else:
        dtypes, batch_sizes = ["float32", "float16", "quint8"], [1, 2, 4, 8, 16, 32, 64]
        image_conc, photo_conc, text_conc = [1, 4, 8, 32, 64], [1, 8, 32, 64], [1, 16]
    started = time.time()
    ceiling_lines, ceilings = model_ceiling(cfg, dtypes, batch_sizes)
    lone = lone_request_latency(cfg, dtype)
    http_lines, results = http_tables(cfg, dtype, image_conc, text_conc, photo_conc)
    load_lines, _, _ = text_under_load(cfg, dtype, 32 if not args.gpu else 256)
    process_lines = process_ceiling(cfg, 256 if args.gpu else 64)
    if args.gpu:
        workers, accelerator_conc = [1, usable_cpus()], [1, 4, 64, 256]
    else:
        workers, accelerator_conc = [1, 2], [1, 64] if quick else [1, 4, 64]
    accelerator_lines, accelerator_rows = accelerator_table(cfg, workers, accelerator_conc)
    mixed_lines, mixed = ([], None) if args.gpu else mixed_load(cfg, dtype)
    feature_lines = features_section(cfg)
    command = command_line("run", argv)
    minutes = (time.time() - started) / 60
    report.write(
        args.out,
        report.header(cfg, command, minutes, dtype)
        + report.summary(ceilings, results, dtype, lone, accelerator_rows, args.gpu, mixed)
        + ceiling_lines
        + http_lines
        + load_lines
        + process_lines
        + accelerator_lines
        + mixed_lines
        + feature_lines,
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
