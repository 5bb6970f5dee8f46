"""Generate CLIP-shaped ONNX models with deterministic random weights.

The files have the exact contract of the public clip-variants models (input `input`, output
`output`, dynamic batch axis; visual [B,3,S,S] float32 or float16, textual [B,77] int32) and the
same operators a PyTorch export produces, so the server, tests and benchmarks exercise exactly what
they would with the real weights. `vit-b-32` has CLIP ViT-B/32's layer shapes, so it costs what the
real model costs; `tiny` builds in well under a second for tests.

float16 files are made the way the public ones were: the float32 graph passed through
onnxconverter-common's float16 conversion. quint8 files: onnxruntime's dynamic quantization.

    python -m photofield_ai.testing.generate --preset tiny --dtype float32 --out models/
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime this project supports (>= 1.17)
DTYPES = ("float32", "float16", "quint8")


@dataclass(frozen=True)
class VisualSpec:
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    def flops_per_item(self) -> int:
        """Multiply-adds × 2 of the matrix products (what dominates the cost)."""
        grid2 = (self.image_size // self.patch_size) ** 2
        conv = 2 * grid2 * self.width * 3 * self.patch_size**2
        n, w = self.tokens, self.width
        layer = 2 * n * 12 * w * w + 4 * n * n * w
        return conv + self.layers * layer + 2 * w * self.output_dim


@dataclass(frozen=True)
class TextualSpec:
    context: int
    vocab: int
    width: int
    layers: int
    heads: int
    output_dim: int

    def flops_per_item(self) -> int:
        n, w = self.context, self.width
        layer = 2 * n * 12 * w * w + 4 * n * n * w
        return self.layers * layer + 2 * w * self.output_dim


@dataclass(frozen=True)
class Preset:
    visual: VisualSpec
    textual: TextualSpec


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        VisualSpec(image_size=224, patch_size=32, width=64, layers=2, heads=2, output_dim=512),
        TextualSpec(context=77, vocab=49408, width=64, layers=2, heads=2, output_dim=512),
    ),
    "vit-b-32": Preset(
        VisualSpec(image_size=224, patch_size=32, width=768, layers=12, heads=12, output_dim=512),
        TextualSpec(context=77, vocab=49408, width=512, layers=12, heads=8, output_dim=512),
    ),
}


class _GraphBuilder:
    """A small helper around onnx.helper that names nodes and initializers uniquely."""

    def __init__(self, seed: int) -> None:
        from onnx import helper

        self.helper = helper
        self.rng = np.random.default_rng(seed)
        self.nodes: list[object] = []
        self.initializers: list[object] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, value: npt.NDArray[np.generic]) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, prefix: str, shape: Sequence[int], std: float) -> str:
        data = self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)
        return self.const(prefix, data)

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], n: int, **attrs: Any) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

    def layer_norm(self, x: str, width: int) -> str:
        scale = self.const("ln_w", np.ones(width, dtype=np.float32))
        bias = self.const("ln_b", np.zeros(width, dtype=np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)

    def linear(self, x: str, n_in: int, n_out: int) -> str:
        w = self.weight("w", (n_in, n_out), 1.0 / math.sqrt(n_in))
        b = self.const("b", np.zeros(n_out, dtype=np.float32))
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def residual_block(self, x: str, width: int, heads: int, mask: str | None) -> str:
        """CLIP's ResidualAttentionBlock as torch exports it: pre-LN, nn.MultiheadAttention on
        sequence-first [L, B, W] tensors with 3-d (L, B*heads, head_dim) reshapes, QuickGELU MLP.

        The 3-d Transpose → MatMul chains matter: in float16 they are what crashes ONNX Runtime's
        NchwcTransformer (see runtime.session), exactly as with the public clip-variants files.
        """
        head_dim = width // heads
        h = self.layer_norm(x, width)
        qkv = self.linear(h, width, 3 * width)
        split = self.const("split", np.array([width] * 3, np.int64))
        q, k, v = self.ops("Split", [qkv, split], 3, axis=-1)
        per_head = self.const("shape", np.array([0, -1, head_dim], dtype=np.int64))
        scale = self.const("scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
        q = self.op(
            "Transpose",
            [self.op("Reshape", [self.op("Mul", [q, scale]), per_head])],
            perm=[1, 0, 2],
        )
        k = self.op("Transpose", [self.op("Reshape", [k, per_head])], perm=[1, 2, 0])
        v = self.op("Transpose", [self.op("Reshape", [v, per_head])], perm=[1, 0, 2])
        scores = self.op("MatMul", [q, k])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        attn = self.op("Softmax", [scores], axis=-1)
        o = self.op("Transpose", [self.op("MatMul", [attn, v])], perm=[1, 0, 2])
        o = self.op("Reshape", [o, self.const("shape", np.array([0, -1, width], dtype=np.int64))])
        x = self.op("Add", [x, self.linear(o, width, width)])
        h = self.linear(self.layer_norm(x, width), width, 4 * width)
        gelu_k = self.const("k", np.array(1.702, dtype=np.float32))
        h = self.op("Mul", [h, self.op("Sigmoid", [self.op("Mul", [h, gelu_k])])])
        return self.op("Add", [x, self.linear(h, 4 * width, width)])

    def transformer(self, x: str, width: int, layers: int, heads: int, mask: str | None) -> str:
        """Batch-first in and out, sequence-first inside, like CLIP's permute(1, 0, 2) pair."""
        x = self.op("Transpose", [x], perm=[1, 0, 2])
        for _ in range(layers):
            x = self.residual_block(x, width, heads, mask)
        return self.op("Transpose", [x], perm=[1, 0, 2])

    def model(self, inputs: list[object], outputs: list[object], name: str) -> Any:
        h = self.helper
        graph = h.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)
        model = h.make_model(
            graph,
            opset_imports=[h.make_opsetid("", OPSET)],
            producer_name="photofield_ai.testing.generate",
        )
        model.ir_version = IR_VERSION
        return model


def _seed(label: str) -> int:
    return zlib.crc32(label.encode())


def build_visual(spec: VisualSpec, seed_label: str = "visual") -> Any:
    """The float32 visual tower: patch conv, class token, positions, transformer, projection."""
    from onnx import TensorProto

    g = _GraphBuilder(_seed(seed_label))
    w, s, p = spec.width, spec.image_size, spec.patch_size
    x = g.op(
        "Conv",
        ["input", g.weight("conv1", (w, 3, p, p), 1.0 / math.sqrt(3 * p * p))],
        kernel_shape=[p, p],
        strides=[p, p],
    )
    x = g.op("Reshape", [x, g.const("shape", np.array([0, w, -1], dtype=np.int64))])
    x = g.op("Transpose", [x], perm=[0, 2, 1])
    batch = g.op(
        "Slice",
        [
            g.op("Shape", ["input"]),
            g.const("s", np.array([0], np.int64)),
            g.const("e", np.array([1], np.int64)),
        ],
    )
    cls_shape = g.op("Concat", [batch, g.const("c", np.array([1, w], np.int64))], axis=0)
    cls = g.op("Expand", [g.weight("class_embedding", (1, 1, w), 1.0), cls_shape])
    x = g.op("Concat", [cls, x], axis=1)
    x = g.op("Add", [x, g.weight("positional_embedding", (spec.tokens, w), 0.1)])
    x = g.layer_norm(x, w)
    x = g.transformer(x, w, spec.layers, spec.heads, mask=None)
    x = g.op("Gather", [x, g.const("i", np.array(0, dtype=np.int64))], axis=1)
    x = g.layer_norm(x, w)
    out = g.op("MatMul", [x, g.weight("proj", (w, spec.output_dim), 1.0 / math.sqrt(w))])
    g.nodes.append(g.helper.make_node("Identity", [out], ["output"]))
    return g.model(
        [g.helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, s, s])],
        [g.helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", spec.output_dim])],
        "clip_visual",
    )


def build_textual(spec: TextualSpec, seed_label: str = "textual") -> Any:
    """The float32 text tower: token + position embedding, causal transformer, end-token pooling."""
    from onnx import TensorProto

    g = _GraphBuilder(_seed(seed_label))
    w, n = spec.width, spec.context
    x = g.op("Gather", [g.weight("token_embedding", (spec.vocab, w), 0.5), "input"], axis=0)
    x = g.op("Add", [x, g.weight("positional_embedding", (n, w), 0.1)])
    mask = g.const("causal_mask", np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1))
    x = g.transformer(x, w, spec.layers, spec.heads, mask=mask)
    x = g.layer_norm(x, w)
    # x[arange(B), input.argmax(-1)]: the end token has the largest id, so argmax finds it.
    eot = g.op("ArgMax", ["input"], axis=-1, keepdims=0)
    batch = g.op("Gather", [g.op("Shape", ["input"]), g.const("i", np.array(0, np.int64))], axis=0)
    rows = g.op(
        "Range", [g.const("z", np.array(0, np.int64)), batch, g.const("one", np.array(1, np.int64))]
    )
    flat_index = g.op("Add", [g.op("Mul", [rows, g.const("n", np.array(n, np.int64))]), eot])
    flat = g.op("Reshape", [x, g.const("shape", np.array([-1, w], dtype=np.int64))])
    x = g.op("Gather", [flat, flat_index], axis=0)
    out = g.op("MatMul", [x, g.weight("text_projection", (w, spec.output_dim), 1.0 / math.sqrt(w))])
    g.nodes.append(g.helper.make_node("Identity", [out], ["output"]))
    return g.model(
        [g.helper.make_tensor_value_info("input", TensorProto.INT32, ["batch", n])],
        [g.helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", spec.output_dim])],
        "clip_textual",
    )


def _save(model: Any, path: Path, dtype: str) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if dtype == "float32":
        onnx.save(model, tmp)
    elif dtype == "float16":
        import warnings

        from onnxconverter_common import float16

        with warnings.catch_warnings():  # it warns for every weight it rounds; that is expected
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(model, keep_io_types=False)
        onnx.save(converted, tmp)
    elif dtype == "quint8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as scratch:
            src = Path(scratch) / "float32.onnx"
            onnx.save(model, src)
            quantize_dynamic(src, tmp, weight_type=QuantType.QUInt8)
    else:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    tmp.replace(path)


def model_paths(out: Path, preset: str, dtype: str) -> tuple[Path, Path]:
    return (
        out / f"clip-{preset}-visual-{dtype}.onnx",
        out / f"clip-{preset}-textual-{dtype}.onnx",
    )


def generate(
    preset: str, dtype: str, out: Path, image_size: int | None = None, force: bool = False
) -> tuple[Path, Path]:
    """Write the visual and textual files for a preset (skipped when they already exist)."""
    spec = PRESETS[preset]
    visual_spec = spec.visual
    name = preset
    if image_size is not None and image_size != visual_spec.image_size:
        visual_spec = VisualSpec(
            image_size,
            visual_spec.patch_size,
            visual_spec.width,
            visual_spec.layers,
            visual_spec.heads,
            visual_spec.output_dim,
        )
        name = f"{preset}-{image_size}"
    visual_path, textual_path = model_paths(out, name, dtype)
    if force or not visual_path.exists():
        _save(build_visual(visual_spec, f"{preset}-visual"), visual_path, dtype)
    if force or not textual_path.exists():
        _save(build_textual(spec.textual, f"{preset}-textual"), textual_path, dtype)
    return visual_path, textual_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m photofield_ai.testing.generate",
        description="Write CLIP-shaped ONNX models with deterministic random weights.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="visual input size (clip-variants use 224, 288, 336, 384, 448)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    visual, textual = generate(args.preset, args.dtype, args.out, args.image_size, args.force)
    spec = PRESETS[args.preset]
    print(f"{visual}  ({spec.visual.flops_per_item() / 1e9:.2f} GFLOPs per image)")
    print(f"{textual}  ({spec.textual.flops_per_item() / 1e9:.2f} GFLOPs per text)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
