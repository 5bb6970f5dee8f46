"""What the adaptive layout's second session costs in memory, and whether sharing the weights
between the two sessions would save it.

    python -m benchmarks.shared_weights [--out BENCHMARKS.md]

ONNX Runtime lets sessions share initializers (`SessionOptions.add_initializer`), but its
Python API has no prepacked-weights container (C/C++/C# only), and on a CPU the MatMul weights
are used prepacked: each session still builds its own packed copy, and the shared originals
stay alive beside them. Each variant runs in a fresh process (RSS is per process and freed
memory is not always returned), loads two sessions of the generated ViT-B/32 float32 visual
model as the adaptive layout does (one single-threaded, one with every core), runs each once,
and prints the RSS each step added.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from benchmarks.common import command_line, publish
from photofield_ai.testing.generate import generate

VARIANTS = {
    "separate": "each session reads its own weights (what the server does)",
    "shared": "initializers shared through add_initializer",
    "shared, no prepacking in the second": (
        "shared, and the every-core session told not to prepack (session.disable_prepacking)"
    ),
}


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def options(
    threads: int, shared: dict[str, ort.OrtValue] | None, prepack: bool = True
) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    for name, value in (shared or {}).items():
        opts.add_initializer(name, value)
    return opts


def measure(path: Path, variant: str) -> str:
    """One variant, in this process: the RSS added by the weights, each session and the run."""
    base = rss_mb()
    shared = None
    steps = []
    if variant != "separate":
        model = onnx.load(str(path))
        shared = {
            i.name: ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(i))
            for i in model.graph.initializer
        }
        del model
        gc.collect()
        steps.append(f"weights as OrtValues +{rss_mb() - base:.0f}")
    providers = ["CPUExecutionProvider"]
    busy = ort.InferenceSession(str(path), options(1, shared), providers=providers)
    model_input = busy.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in model_input.shape]
    x = np.zeros(shape, dtype=np.uint8 if "uint8" in model_input.type else np.float32)
    busy.run(None, {model_input.name: x})
    one = rss_mb()
    steps.append(f"first session +{one - base:.0f}")
    prepack = variant != "shared, no prepacking in the second"
    alone = ort.InferenceSession(str(path), options(0, shared, prepack), providers=providers)
    alone.run(None, {model_input.name: x})
    steps.append(f"second session +{rss_mb() - one:.0f}")
    return f"| {variant} | {rss_mb() - base:.0f} | {', '.join(steps)} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="record in this BENCHMARKS.md")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(measure(Path(args.child[0]), args.child[1]))
        return 0
    visual, _ = generate("vit-b-32", "float32", Path(".bench") / "models")
    rows = []
    for variant in VARIANTS:
        child = [sys.executable, "-m", "benchmarks.shared_weights", "--child", str(visual), variant]
        rows.append(
            subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip()
        )
    lines = [
        "## Sharing the weights of the adaptive layout's two sessions",
        "",
        f"`{command_line('shared_weights', argv)}` — two sessions of the generated ViT-B/32 "
        "float32 visual model, each variant in a fresh process; RSS in MB.",
        "",
        "| variant | RSS added, MB | steps (MB) |",
        "|---|---|---|",
        *rows,
        "",
        *(f"- {name}: {what}" for name, what in VARIANTS.items()),
    ]
    publish(lines, args.out, "shared-weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
