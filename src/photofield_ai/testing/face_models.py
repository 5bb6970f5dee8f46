"""Generate face models shaped like the real ones, with deterministic random weights: a
RetinaFace detector on a MobileNet-v2 backbone at 640² and an EdgeFace-XXS-sized recognizer at
112², with the inputs and outputs of the uniface / edgeface-onnx files. They cost what the real
ones cost (the benchmark's mixed Photofield load runs them), but find nothing real: the
detector's confidence head is biased so that a handful of random anchors pass the threshold,
about what a photo of a few people gives.

    python -m photofield_ai.testing.face_models --out models/generated
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from photofield_ai.testing.generate import IR_VERSION, _GraphBuilder

DETECTOR_SIZE = 640
# MobileNet-v2 (expansion t, channels c, blocks n, stride s), as in the paper.
MOBILENET_V2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
FPN_CHANNELS = 64
ANCHORS_PER_CELL = 2
# The random confidence head's face logits vary little (std ~0.35): scaled by this and shifted by
# the bias, a few anchors of 16,800 score > 0.5 on a photo (measured on the test photos).
FACE_LOGIT_SCALE = 20.0
FACE_LOGIT_BIAS = -7.0


class _ConvBuilder(_GraphBuilder):
    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        stride: int = 1,
        groups: int = 1,
        relu6: bool = True,
        bias: float = 0.0,
    ) -> str:
        std = 1.0 / np.sqrt(c_in // groups * k * k)
        w = self.weight("conv_w", (c_out, c_in // groups, k, k), float(std))
        b = self.const("conv_b", np.full(c_out, bias, dtype=np.float32))
        pad = k // 2
        y = self.op(
            "Conv",
            [x, w, b],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
        )
        if relu6:
            lo = self.const("lo", np.array(0.0, dtype=np.float32))
            hi = self.const("hi", np.array(6.0, dtype=np.float32))
            y = self.op("Clip", [y, lo, hi])
        return y

    def inverted_residual(self, x: str, c_in: int, c_out: int, stride: int, t: int) -> str:
        hidden = c_in * t
        y = self.conv(x, c_in, hidden, 1) if t != 1 else x
        y = self.conv(y, hidden, hidden, 3, stride, groups=hidden)
        y = self.conv(y, hidden, c_out, 1, relu6=False)
        return self.op("Add", [x, y]) if stride == 1 and c_in == c_out else y

    def head(self, x: str, c_in: int, per_anchor: int, bias: float = 0.0) -> str:
        """[1, C, H, W] → [1, H·W·anchors, per_anchor] (RetinaFace's permute + view)."""
        y = self.conv(x, c_in, ANCHORS_PER_CELL * per_anchor, 1, relu6=False, bias=0.0)
        y = self.op("Transpose", [y], perm=[0, 2, 3, 1])
        shape = self.const("shape", np.array([1, -1, per_anchor], dtype=np.int64))
        y = self.op("Reshape", [y, shape])
        if bias:
            scale = self.const("scale", np.array([1.0, FACE_LOGIT_SCALE], dtype=np.float32))
            shift = self.const("bias", np.array([0.0, bias], dtype=np.float32))
            y = self.op("Add", [self.op("Mul", [y, scale]), shift])
        return y


def build_detector(size: int = DETECTOR_SIZE) -> Any:
    """RetinaFace, MobileNet-v2 backbone, FPN + context heads on strides 8/16/32: input
    [1, 3, 640, 640] (BGR minus the means), outputs loc [1, N, 4], conf [1, N, 2] (softmax),
    landmarks [1, N, 10], N = 16,800."""
    from onnx import TensorProto

    g = _ConvBuilder(seed=640)
    x = g.conv("input", 3, 32, 3, 2)
    c_in, features = 32, []
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            x = g.inverted_residual(x, c_in, c, s if i == 0 else 1, t)
            c_in = c
        if c in (32, 96, 320):  # strides 8, 16, 32
            features.append((x, c))
    lateral = [g.conv(f, c, FPN_CHANNELS, 1) for f, c in features]
    for i in (1, 0):  # top-down: upsample the coarser level and add
        scales = g.const("scales", np.array([1, 1, 2, 2], dtype=np.float32))
        up = g.op("Resize", [lateral[i + 1], "", scales], mode="nearest")
        lateral[i] = g.conv(g.op("Add", [lateral[i], up]), FPN_CHANNELS, FPN_CHANNELS, 3)
    context = [g.conv(level, FPN_CHANNELS, FPN_CHANNELS, 3) for level in lateral]
    outputs = {}
    for name, per_anchor in (("loc", 4), ("conf", 2), ("landmarks", 10)):
        heads = [
            g.head(c, FPN_CHANNELS, per_anchor, FACE_LOGIT_BIAS if name == "conf" else 0.0)
            for c in context
        ]
        merged = g.op("Concat", heads, axis=1)
        if name == "conf":
            merged = g.op("Softmax", [merged], axis=-1)
        if name == "loc":  # small offsets, as a trained head gives
            merged = g.op("Mul", [merged, g.const("k", np.array(0.1, dtype=np.float32))])
        g.nodes.append(g.helper.make_node("Identity", [merged], [name]))
        outputs[name] = per_anchor
    n = sum((size // s) ** 2 * ANCHORS_PER_CELL for s in (8, 16, 32))
    return g.model(
        [g.helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [
            g.helper.make_tensor_value_info(k, TensorProto.FLOAT, [1, n, v])
            for k, v in outputs.items()
        ],
        "retinaface_mv2_shaped",
    )


def build_recognizer(dim: int = 512) -> Any:
    """EdgeFace-XXS-sized: [batch, 3, 112, 112] in [-1, 1] → [batch, 512]."""
    from onnx import TensorProto

    g = _ConvBuilder(seed=112)
    x = g.conv("input", 3, 24, 3, 2)  # 56²
    c_in = 24
    for c, s in ((32, 2), (48, 2), (64, 1), (96, 2), (128, 1)):  # → 7²
        x = g.inverted_residual(x, c_in, c, s, 4)
        c_in = c
    pooled = g.op("GlobalAveragePool", [x])
    flat = g.op("Flatten", [pooled], axis=1)
    out = g.linear(flat, c_in, dim)
    g.nodes.append(g.helper.make_node("Identity", [out], ["embedding"]))
    return g.model(
        [g.helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [g.helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        "edgeface_xxs_shaped",
    )


def generate(out: Path, force: bool = False) -> tuple[Path, Path]:
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "retinaface-mv2-shaped.onnx", out / "edgeface-xxs-shaped.onnx")
    for path, build in zip(paths, (build_detector, build_recognizer), strict=True):
        if force or not path.exists():
            model = build()
            model.ir_version = IR_VERSION
            tmp = path.with_name(path.name + ".tmp")
            onnx.save(model, tmp)
            tmp.replace(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m photofield_ai.testing.face_models", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("models/generated"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.force):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
