"""A second, deliberately different model family: what keeps the family seam honest.

It is shaped like SigLIP rather than CLIP — the image is squashed to S×S (no crop) and scaled to
[-1, 1] (mean = std = 0.5); text is a byte-level tokenizer (ids = UTF-8 bytes + 3, start 1,
end 2, zero padded, int64) standing in for SentencePiece — and comes with a generator of tiny
ONNX models of that shape (random weights), which the tests serve over HTTP with
`PHOTOFIELD_AI_MODEL_FAMILY=toy`. Adding it took this module and one line in the registry;
a real second family (SigLIP, a multilingual text tower) is written the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from photofield_ai.families.base import (
    Array,
    ImageEncoder,
    ModelFamily,
    ModelSpec,
    TextEncoder,
    first_output,
)
from photofield_ai.imaging.decode import DecodeLimits, decoded_rgb, make_upright
from photofield_ai.imaging.errors import ImageDecodeError
from photofield_ai.runtime.session import ModelLoadError, Session

START, END, BYTE_OFFSET = 1, 2, 3
VOCAB = 256 + BYTE_OFFSET


def _spec(session: Session, family: str, encoder: type[ImageEncoder | TextEncoder]) -> ModelSpec:
    name, out_type, dim = first_output(session)
    size = session.input_shape[-1]
    assert isinstance(size, int)
    return ModelSpec(
        family,
        encoder.kind,
        size,
        session.input_type,
        name,
        out_type,
        dim,
        str(session.path),
        tuple(session.providers),
    )


class ToyImageEncoder(ImageEncoder):
    @classmethod
    def inspect(cls, session: Session, family: str) -> ModelSpec:
        shape = session.input_shape
        if len(shape) != 4 or shape[1:2] != [3] or not isinstance(shape[3], int):
            raise ModelLoadError(f"{session.path}: toy image input must be [batch, 3, S, S]")
        return _spec(session, family, cls)

    def preprocess(self, data: bytes, limits: DecodeLimits) -> Array:
        s = self.spec.input_size
        with decoded_rgb(data, limits) as d:
            try:
                squashed = make_upright(d.rgb, d.orientation).resize(
                    (s, s), Image.Resampling.BILINEAR
                )
            except (OSError, ValueError) as exc:
                raise ImageDecodeError(f"cannot resize image: {exc}") from None
        pixels = np.asarray(squashed, dtype=np.float32).transpose(2, 0, 1)
        return np.ascontiguousarray((pixels / 255.0 - 0.5) / 0.5, dtype=np.float32)

    def example_input(self, batch: int) -> Array:
        s = self.spec.input_size
        return np.zeros((batch, 3, s, s), dtype=np.float32)


class ToyTextEncoder(TextEncoder):
    @classmethod
    def inspect(cls, session: Session, family: str) -> ModelSpec:
        shape = session.input_shape
        if len(shape) != 2 or session.input_type != "tensor(int64)":
            raise ModelLoadError(f"{session.path}: toy text input must be [batch, n] int64")
        return _spec(session, family, cls)

    def tokenize(self, text: str) -> Array:
        n = self.spec.input_size
        body = [b + BYTE_OFFSET for b in text.encode("utf-8", "replace")[: n - 2]]
        ids = np.zeros(n, dtype=np.int64)
        ids[: len(body) + 2] = [START, *body, END]
        return ids

    def example_input(self, batch: int) -> Array:
        return np.stack([self.tokenize("")] * batch)


FAMILY = ModelFamily("toy", ToyImageEncoder, ToyTextEncoder)


def write_models(
    out: Path, image_size: int = 64, context: int = 16, dim: int = 32
) -> tuple[Path, Path]:
    """Tiny ONNX models of this family's shape (needs the `onnx` package: the `models` extra).
    Image: 8×8 patches projected to `dim`, averaged; text: byte embeddings, averaged."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    out.mkdir(parents=True, exist_ok=True)

    def save(
        nodes: list[onnx.NodeProto], inits: dict[str, Array], inp: onnx.ValueInfoProto, path: Path
    ) -> Path:
        output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
        graph = helper.make_graph(
            nodes,
            path.stem,
            [inp],
            [output],
            initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, path)
        return path

    visual = save(
        [
            helper.make_node(
                "Conv", ["pixels", "patch"], ["patches"], kernel_shape=[8, 8], strides=[8, 8]
            ),
            helper.make_node("ReduceMean", ["patches"], ["embedding"], axes=[2, 3], keepdims=0),
        ],
        {"patch": rng.standard_normal((dim, 3, 8, 8)).astype(np.float32) * 0.05},
        helper.make_tensor_value_info(
            "pixels", TensorProto.FLOAT, ["batch", 3, image_size, image_size]
        ),
        out / "toy-visual.onnx",
    )
    textual = save(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], axis=0),
            helper.make_node("ReduceMean", ["embedded"], ["embedding"], axes=[1], keepdims=0),
        ],
        {"table": rng.standard_normal((VOCAB, dim)).astype(np.float32)},
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", context]),
        out / "toy-textual.onnx",
    )
    return visual, textual
