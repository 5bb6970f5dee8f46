"""What a model family is: how an item becomes model input (pre), how one batch is run (core)
and what comes back per item (post) — one class per model kind, as Infinity does it.

A family module defines an `ImageEncoder` and a `TextEncoder` subclass and one `ModelFamily`
value; registering it is one line in `families/__init__.py`. Nothing here knows HTTP or queues:
the serving layer builds a batcher around `run`, the API calls `preprocess` / `tokenize` in
worker threads and hands the rows to the batcher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.runtime.session import NUMPY_TYPES, ModelLoadError, Session

Kind = Literal["visual", "textual"]
KINDS: tuple[Kind, Kind] = ("visual", "textual")
Array = npt.NDArray[np.generic]
Embeddings = npt.NDArray[np.floating]


@dataclass(frozen=True)
class ModelSpec:
    """What the request path needs to know of a loaded embedding model: small and picklable,
    so that code without the session (a worker thread, another process) can prepare items."""

    family: str
    kind: Kind
    input_size: int  # image side S for image models, context length for text models
    input_type: str
    output_name: str
    output_type: str
    output_dim: int | None
    path: str
    providers: tuple[str, ...]

    def info(self) -> dict[str, str]:
        """The labels of the `model_info` metric."""
        return {
            "path": self.path,
            "providers": ",".join(self.providers),
            "input_type": self.input_type,
            "output_type": self.output_type,
            "input_size": str(self.input_size),
        }


def first_output(session: Session) -> tuple[str, str, int | None]:
    """Name, type and last dimension of the session's first output (an embedding model's)."""
    out = session.outputs[0]
    if out.type not in NUMPY_TYPES:
        raise ModelLoadError(f"{session.path}: unsupported output type {out.type}")
    shape = list(out.shape)
    dim = shape[-1] if shape and isinstance(shape[-1], int) else None
    return out.name, out.type, dim


class Encoder(ABC):
    """One model kind of one family. Built from a `ModelSpec` alone (no session), so the
    pre-step runs wherever the spec is known; `run` is given the session."""

    kind: ClassVar[Kind]

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @classmethod
    @abstractmethod
    def inspect(cls, session: Session, family: str) -> ModelSpec:
        """The spec of `session` if it is a model of this kind, else a one-line ModelLoadError."""

    @abstractmethod
    def example_input(self, batch: int) -> Array:
        """A valid batch of `batch` items (warm-up, benchmarks)."""

    def run(self, session: Session, batch: Array) -> Embeddings:
        """Core and post: one session call on a stacked batch → one embedding row per item,
        in the model's own output dtype (the wire encoding depends on it)."""
        return session.run(batch, [self.spec.output_name])[0]


class ImageEncoder(Encoder):
    kind: ClassVar[Kind] = "visual"
    # What a float input of this family expects of 0-255 pixels, per channel: (scale, bias) of
    # pixel × scale + bias. With it a float model can be made to take uint8 pixels, the
    # normalization moved into its graph (runtime.graph; the encoder must then take uint8
    # input too). None: the family's models are loaded as they are.
    pixel_normalization: ClassVar[tuple[Sequence[float], Sequence[float]] | None] = None

    @abstractmethod
    def preprocess(self, data: bytes, limits: DecodeLimits) -> Array:
        """Image file bytes → one model input row. Raises imaging.errors.ImageDecodeError
        (or a subclass) for what the client sent wrong. Runs in a decode thread."""


class TextEncoder(Encoder):
    kind: ClassVar[Kind] = "textual"

    @abstractmethod
    def tokenize(self, text: str) -> Array:
        """Text → one model input row; never fails (over-long text is cut)."""


@dataclass(frozen=True)
class DefaultModels:
    visual: str
    textual: str
    description: str  # for the start-up log, e.g. "ViT-B/32 float32"


@dataclass(frozen=True)
class ModelFamily:
    name: str
    image: type[ImageEncoder]
    text: type[TextEncoder]
    # Model locations used when the settings name none; None: they must be set.
    default_models: Callable[[bool], DefaultModels] | None = None

    def encoder_class(self, kind: Kind) -> type[Encoder]:
        return self.image if kind == "visual" else self.text

    def inspect(self, session: Session, kind: Kind) -> ModelSpec:
        """The spec of a model configured as `kind`; a model of the other kind is named as
        such (the two settings swapped is a common mistake)."""
        try:
            return self.encoder_class(kind).inspect(session, self.name)
        except ModelLoadError as exc:
            other: Kind = "textual" if kind == "visual" else "visual"
            try:
                self.encoder_class(other).inspect(session, self.name)
            except ModelLoadError:
                raise exc from None
            raise ModelLoadError(
                f"{session.path} is a {other} model, but it was configured as the {kind} model"
            ) from None

    def encoder(self, spec: ModelSpec) -> Encoder:
        return self.encoder_class(spec.kind)(spec)
