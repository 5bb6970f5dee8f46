"""A CLIP model's ONNX Runtime session, adapted to whatever dtypes the file declares.

The clip-variants files come in float32, float16 and quantized flavours, with float16 or float32
image input, int32 or int64 token input and float16 or float32 output. Everything above this
module works in float32 images and int64 tokens; this is where they are cast to what the file wants.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

log = logging.getLogger(__name__)

ModelKind = Literal["visual", "textual"]

_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}

# ONNX Runtime >= 1.23 on x86-64 dereferences a null schema inside the NchwcTransformer while
# creating a session for float16 graphs with a Transpose → MatMul chain on a 3-d dynamic tensor
# (onnxruntime issue #28392): the process dies with SIGSEGV, no exception. The float16
# clip-variants files, made with onnxconverter-common, have such chains, and they are the default
# models. The transformer only rewrites convolutions into the NCHWc layout and CLIP has one
# (the patch embedding), so turning it off costs nothing measurable and is done for every model.
DISABLED_OPTIMIZERS = ("NchwcTransformer",)


class ModelLoadError(RuntimeError):
    """The file is missing, not ONNX, or not a CLIP visual/textual model; message is one line."""


@dataclass(frozen=True)
class ModelSignature:
    kind: ModelKind
    input_name: str
    output_name: str
    input_type: str
    output_type: str
    input_size: int  # image side S for visual models, context length for textual ones
    output_dim: int | None


def _signature(session: ort.InferenceSession, path: Path) -> ModelSignature:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(
            f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}"
        )
    inp, out = inputs[0], outputs[0]
    shape = list(inp.shape)
    if inp.type not in _NUMPY_TYPES or out.type not in _NUMPY_TYPES:
        raise ModelLoadError(f"{path}: unsupported tensor types {inp.type} -> {out.type}")
    if len(shape) == 4:
        channels, height, width = shape[1:]
        if channels != 3 or not isinstance(height, int) or height != width:
            raise ModelLoadError(f"{path}: visual input must be [batch, 3, S, S], found {shape}")
        kind: ModelKind = "visual"
        size = height
    elif len(shape) == 2:
        if not isinstance(shape[1], int) or inp.type not in ("tensor(int32)", "tensor(int64)"):
            raise ModelLoadError(
                f"{path}: textual input must be [batch, context] integers, found {shape} {inp.type}"
            )
        kind, size = "textual", shape[1]
    else:
        raise ModelLoadError(f"{path}: input shape {shape} is neither an image nor a text model")
    if isinstance(shape[0], int) and shape[0] != 1:
        raise ModelLoadError(f"{path}: batch axis must be dynamic, found {shape[0]}")
    out_shape = list(out.shape)
    output_dim = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
    return ModelSignature(kind, inp.name, out.name, inp.type, out.type, size, output_dim)


def open_session(
    path: Path, providers: list[str], intra_op_threads: int = 0
) -> ort.InferenceSession:
    """An ONNX Runtime session with this project's options, or a one-line ModelLoadError.
    `intra_op_threads` = 0 lets ONNX Runtime use one thread per physical core."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    # Spinning worker threads burn the cores the other model's session and the decoders need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path),
            options,
            providers=providers,
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
    except Exception as exc:  # onnxruntime raises several private exception types
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise ModelLoadError(f"cannot load model {path}: {first_line}") from None


class ModelSession:
    """One loaded model. `run` is thread-safe (ONNX Runtime sessions allow concurrent Run calls)."""

    def __init__(
        self,
        path: Path,
        providers: list[str],
        expected_kind: ModelKind | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        self.path = path
        self.intra_op_threads = intra_op_threads
        self.session = open_session(path, providers, intra_op_threads)
        self.signature = _signature(self.session, path)
        if expected_kind is not None and self.signature.kind != expected_kind:
            raise ModelLoadError(
                f"{path} is a {self.signature.kind} model, but it was configured as the "
                f"{expected_kind} model"
            )
        self.providers: list[str] = list(self.session.get_providers())
        self._input_dtype = _NUMPY_TYPES[self.signature.input_type]

    @property
    def kind(self) -> ModelKind:
        return self.signature.kind

    @property
    def input_size(self) -> int:
        return self.signature.input_size

    def example_input(self, batch: int = 1) -> npt.NDArray[np.generic]:
        if self.kind == "visual":
            s = self.input_size
            return np.zeros((batch, 3, s, s), dtype=np.float32)
        tokens = np.zeros((batch, self.input_size), dtype=np.int64)
        tokens[:, 0], tokens[:, 1] = 49406, 49407
        return tokens

    def run(self, batch: npt.NDArray[np.generic]) -> npt.NDArray[np.floating]:
        """Run one stacked batch; returns the output in the model's own dtype."""
        feed = batch if batch.dtype == self._input_dtype else batch.astype(self._input_dtype)
        sig = self.signature
        (output,) = self.session.run([sig.output_name], {sig.input_name: feed})
        return output  # type: ignore[no-any-return]

    def warmup(self) -> None:
        """The first Run allocates arenas and, on GPUs, compiles kernels: not a user's problem."""
        self.run(self.example_input(1))

    def describe(self) -> str:
        return (
            f"{self.kind.capitalize()} inference ready, input size {self.input_size}, "
            f"type {self.signature.input_type}"
        )


class OnnxModel:
    """Any single-input model (the face detector and recognizer): casts the input to the dtype
    the file declares and returns every output."""

    def __init__(self, path: Path, providers: list[str]) -> None:
        self.path = path
        self.session = open_session(path, providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{path}: expected one input, found {len(inputs)}")
        self.input_name: str = inputs[0].name
        self.input_shape: list[int | str | None] = list(inputs[0].shape)
        self.input_type: str = inputs[0].type
        if self.input_type not in _NUMPY_TYPES:
            raise ModelLoadError(f"{path}: unsupported input type {self.input_type}")
        self.outputs = self.session.get_outputs()
        self.providers: list[str] = list(self.session.get_providers())
        self._input_dtype = _NUMPY_TYPES[self.input_type]

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    def run(self, batch: npt.NDArray[np.generic]) -> list[npt.NDArray[np.floating]]:
        feed = batch if batch.dtype == self._input_dtype else batch.astype(self._input_dtype)
        outputs: list[npt.NDArray[np.floating]] = self.session.run(None, {self.input_name: feed})
        return outputs
