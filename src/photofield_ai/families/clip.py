"""OpenAI CLIP, as the clip-variants ONNX files export it: the Photofield default.

Image: torchvision's Resize(S) + CenterCrop(S) + CLIP normalization (clip.preprocess, with the
libjpeg-turbo fast path); text: CLIP's BPE tokenizer, start and end tokens, zero padding to the
context. Both towers have one input and one output row per item.
"""

from __future__ import annotations

import numpy as np

from photofield_ai.clip.preprocess import (
    NORMALIZE_BIAS,
    NORMALIZE_SCALE,
    decode_and_crop,
    preprocess_image,
)
from photofield_ai.clip.tokenizer import ClipTokenizer
from photofield_ai.families.base import (
    Array,
    DefaultModels,
    ImageEncoder,
    ModelFamily,
    ModelSpec,
    TextEncoder,
    first_output,
)
from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.runtime.session import ModelLoadError, Session

CLIP_VARIANTS_URL = "https://huggingface.co/mlunar/clip-variants/resolve/main/models"
# The original README's default URL reads `.../main/modelclip-vit-...`: a typo for
# `.../main/models/clip-vit-...`.
DEFAULT_MODEL = CLIP_VARIANTS_URL + "/clip-vit-base-patch32-{kind}-{dtype}.onnx"


DEFAULT_ARCHITECTURE = "ViT-B/32"


def default_dtype(accelerated: bool) -> str:
    """float16 on an accelerator (the original's default), float32 on a CPU, where float16 was
    no faster in our runs (BENCHMARKS.md) and needs the crash guard."""
    return "float16" if accelerated else "float32"


def default_models(accelerated: bool) -> DefaultModels:
    dtype = default_dtype(accelerated)
    return DefaultModels(
        DEFAULT_MODEL.format(kind="visual", dtype=dtype),
        DEFAULT_MODEL.format(kind="textual", dtype=dtype),
        f"{DEFAULT_ARCHITECTURE} {dtype}",
    )


def _batch_axis_is_dynamic(session: Session, shape: list[int | str | None]) -> None:
    if isinstance(shape[0], int) and shape[0] != 1:
        raise ModelLoadError(f"{session.path}: batch axis must be dynamic, found {shape[0]}")


def _spec(session: Session, family: str, kind: str, size: int) -> ModelSpec:
    name, out_type, dim = first_output(session)
    return ModelSpec(
        family,
        "visual" if kind == "visual" else "textual",
        size,
        session.input_type,
        name,
        out_type,
        dim,
        str(session.path),
        tuple(session.providers),
    )


PIXELS = "tensor(uint8)"


def _square_side(shape: list[int | str | None], height: int, width: int) -> int | None:
    side = shape[height]
    return side if isinstance(side, int) and side == shape[width] else None


class ClipImageEncoder(ImageEncoder):
    """Two input layouts: the clip-variants files' normalized float [batch, 3, S, S] (the CPU
    normalizes), or uint8 RGB pixels [batch, S, S, 3] for a model that normalizes itself (the
    CPU neither computes nor copies float pixels; a quarter of the bytes per item). A float
    file is turned into the second kind at load when the settings ask (runtime.graph)."""

    pixel_normalization = (tuple(NORMALIZE_SCALE.tolist()), tuple(NORMALIZE_BIAS.tolist()))

    @classmethod
    def inspect(cls, session: Session, family: str) -> ModelSpec:
        shape = session.input_shape
        if session.input_type == PIXELS:
            side = _square_side(shape, 1, 2) if len(shape) == 4 and shape[3] == 3 else None
            if side is None:
                raise ModelLoadError(
                    f"{session.path}: uint8 visual input must be [batch, S, S, 3], found {shape}"
                )
        else:
            side = _square_side(shape, 2, 3) if len(shape) == 4 and shape[1] == 3 else None
            if side is None:
                raise ModelLoadError(
                    f"{session.path}: visual input must be [batch, 3, S, S], found {shape}"
                )
            if session.input_type not in ("tensor(float)", "tensor(float16)"):
                raise ModelLoadError(
                    f"{session.path}: visual input must be float or uint8, not {session.input_type}"
                )
        _batch_axis_is_dynamic(session, shape)
        return _spec(session, family, "visual", side)

    @property
    def takes_pixels(self) -> bool:
        return self.spec.input_type == PIXELS

    def preprocess(self, data: bytes, limits: DecodeLimits) -> Array:
        if self.takes_pixels:
            return decode_and_crop(data, self.spec.input_size, limits)
        return preprocess_image(data, self.spec.input_size, limits)

    def example_input(self, batch: int) -> Array:
        s = self.spec.input_size
        if self.takes_pixels:
            return np.zeros((batch, s, s, 3), dtype=np.uint8)
        return np.zeros((batch, 3, s, s), dtype=np.float32)


class ClipTextEncoder(TextEncoder):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.tokenizer = ClipTokenizer.from_package()

    @classmethod
    def inspect(cls, session: Session, family: str) -> ModelSpec:
        shape = session.input_shape
        if (
            len(shape) != 2
            or not isinstance(shape[1], int)
            or session.input_type not in ("tensor(int32)", "tensor(int64)")
        ):
            raise ModelLoadError(
                f"{session.path}: textual input must be [batch, context] integers, found "
                f"{shape} {session.input_type}"
            )
        _batch_axis_is_dynamic(session, shape)
        return _spec(session, family, "textual", shape[1])

    def tokenize(self, text: str) -> Array:
        return self.tokenizer.tokenize(text, self.spec.input_size)

    def example_input(self, batch: int) -> Array:
        tokens = np.zeros((batch, self.spec.input_size), dtype=np.int64)
        tokens[:, 0], tokens[:, 1] = self.tokenizer.sot, self.tokenizer.eot
        return tokens


FAMILY = ModelFamily("clip", ClipImageEncoder, ClipTextEncoder, default_models)
