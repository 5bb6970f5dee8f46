"""A model's graph rewritten before ONNX Runtime loads it: a float image model made to take
uint8 pixels, with its normalization moved into the graph.

Why: an image model that takes normalized float32 [batch, 3, S, S] (the clip-variants files)
makes the CPU compute, allocate and copy four bytes per pixel for every image, and copy them
again into the batch and, on a GPU, to the device. On the simulated accelerator that costs
~0.8 ms of server CPU per thumbnail, a third more than the whole request with uint8 input
(BENCHMARKS.md "compare"). Wrapped, the model takes the decoder's uint8 [batch, S, S, 3] as it
comes, and the same arithmetic (× scale + bias, in float32, then the model's own float type)
runs inside the session call, on the device: with float32 models the embeddings are
bit-identical to normalizing on the CPU.

The rewrite loads the file with the `onnx` package, prepends four or five nodes and saves the
result to a file that ONNX Runtime then loads as it loads any model (runtime.session): a session
made from bytes in memory keeps those bytes for its whole life (onnxruntime's InferenceSession
holds them, to re-create itself on a provider fallback), and left ~500 MB more resident after
loading a float16 ViT-B/32. The rewrite adds seconds to loading — a ViT-B/32 visual model on
the 2-core VM: +3 s in float16, +6 s in float32, a second of it importing `onnx` — and, while it
runs, a float32 model's size twice more in memory. Models over protobuf's 2 GB limit are left as
they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from photofield_ai.memory import trim_malloc

log = logging.getLogger(__name__)

PIXELS_INPUT = "pixels"
_PROTOBUF_LIMIT = 2**31 - 1


def _unique(names: set[str], wanted: str) -> str:
    name, n = wanted, 0
    while name in names:
        n += 1
        name = f"{wanted}_{n}"
    names.add(name)
    return name


def with_pixel_input(
    path: Path, destination: Path, scale: Sequence[float], bias: Sequence[float]
) -> bool:
    """Save to `destination` the model at `path`, its float [batch, 3, S, S] input replaced by
    uint8 pixels [batch, S, S, 3] that the graph itself turns into `pixel × scale[c] + bias[c]`
    (float32, then cast to the input's float type). False, and nothing written, where there is
    nothing to do or it cannot be done: an input that is not a float [batch, 3, S, S] image
    (the model is then loaded as it is, and checked as it is), or a model too large to
    rewrite. A file `onnx` cannot read raises ValueError."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError and others for a bad file
        raise ValueError(f"cannot read {path} as ONNX: {exc}") from None
    try:
        if not _prepend_normalization(model, scale, bias):
            return False
        if model.ByteSize() > _PROTOBUF_LIMIT:
            log.warning("%s is too large to rewrite for uint8 pixels; the CPU normalizes", path)
            return False
        onnx.save(model, str(destination))
        return True
    finally:
        # The parsed model's memory, freed in many pieces, back to the OS now — rewritten or
        # not (a file that already takes uint8 is parsed just the same).
        del model
        trim_malloc()


def _prepend_normalization(model: Any, scale: Sequence[float], bias: Sequence[float]) -> bool:
    """Rewrite `model` in place (see with_pixel_input); False, untouched, if its one input is
    not a float [batch, 3, S, S] image."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1:
        return False
    image = inputs[0]
    tensor = image.type.tensor_type
    dims = tensor.shape.dim
    if (
        tensor.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16)
        or len(dims) != 4
        or dims[1].dim_value != 3
        or not dims[2].dim_value
        or dims[2].dim_value != dims[3].dim_value
    ):
        return False
    side = dims[2].dim_value
    names = {n for node in graph.node for n in (*node.input, *node.output)}
    names |= {i.name for i in graph.input} | {t.name for t in graph.initializer}
    pixels, nchw, floats, scaled, scale_name, bias_name = (
        _unique(names, n)
        for n in (
            PIXELS_INPUT,
            "pixels_nchw",
            "pixels_float",
            "pixels_scaled",
            "pixel_scale",
            "pixel_bias",
        )
    )
    batch = dims[0].dim_param or (dims[0].dim_value or "batch")
    channel = np.asarray(scale, np.float32).reshape(1, 3, 1, 1)
    offset = np.asarray(bias, np.float32).reshape(1, 3, 1, 1)
    normalized = (
        image.name if tensor.elem_type == TensorProto.FLOAT else _unique(names, "pixels_normalized")
    )
    nodes = [
        helper.make_node("Transpose", [pixels], [nchw], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", [nchw], [floats], to=TensorProto.FLOAT),
        helper.make_node("Mul", [floats, scale_name], [scaled]),
        helper.make_node("Add", [scaled, bias_name], [normalized]),
    ]
    if normalized != image.name:
        nodes.append(helper.make_node("Cast", [normalized], [image.name], to=tensor.elem_type))
    position = list(graph.input).index(image)
    graph.input.remove(image)
    graph.input.insert(
        position, helper.make_tensor_value_info(pixels, TensorProto.UINT8, [batch, side, side, 3])
    )
    graph.initializer.extend(
        [numpy_helper.from_array(channel, scale_name), numpy_helper.from_array(offset, bias_name)]
    )
    for node in reversed(nodes):  # ahead of every node that reads the image: topological order
        graph.node.insert(0, node)
    return True
