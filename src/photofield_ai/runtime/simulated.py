"""A simulated accelerator: a model backend whose batch call takes t(b) = α + β·b of wall time
and no CPU (the calling thread sleeps, as it waits on a CUDA call), with output of the real
shape and dtype. It is what every accelerator-class figure is measured against on a machine
without a GPU: the model's cost is known and ~zero CPU, so what remains is the server's own.

Never reachable by accident: only a model location with the `simulated://` scheme selects it,
its provider is named `SimulatedAccelerator` in the logs and in `photofield_ai_model_info`, and
the start-up log warns that embeddings are not real.

    PHOTOFIELD_AI_VISUAL_MODEL='simulated://visual?alpha_ms=1&beta_ms=0.03'
    PHOTOFIELD_AI_TEXTUAL_MODEL='simulated://textual?alpha_ms=1&beta_ms=0.01'

Defaults are calibrated to a datacenter GPU running ViT-B/32 in float16 (α = 1 ms per call,
β = 0.03 ms per image: ~25,000 images/s at batch 64; texts β = 0.01 ms).
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from photofield_ai.runtime.session import OutputInfo
from photofield_ai.runtime.threads import prctl

SCHEME = "simulated://"
PROVIDER = "SimulatedAccelerator"
DEFAULTS = {
    "visual": {"alpha_ms": 1.0, "beta_ms": 0.03},
    "textual": {"alpha_ms": 1.0, "beta_ms": 0.01},
}


class SimulatedLocationError(ValueError):
    pass


@dataclass(frozen=True)
class SimulatedModel:
    """A parsed `simulated://` location."""

    kind: str  # visual or textual
    alpha_s: float
    beta_s: float
    image_size: int = 224
    context: int = 77
    output_dim: int = 512
    output_dtype: str = "float16"
    pixel_input: bool = True  # uint8 [B, S, S, 3] (normalization in the model), else float32 NCHW

    @property
    def location(self) -> str:
        return (
            f"{SCHEME}{self.kind}?alpha_ms={self.alpha_s * 1000:g}&beta_ms={self.beta_s * 1000:g}"
        )

    def call_seconds(self, batch: int) -> float:
        return self.alpha_s + self.beta_s * batch


def is_simulated(value: str) -> bool:
    return value.strip().startswith(SCHEME)


def parse(value: str) -> SimulatedModel:
    """`simulated://<visual|textual>?alpha_ms=…&beta_ms=…&dim=…&dtype=…&size=…&input=pixels|float`"""
    parsed = urllib.parse.urlsplit(value.strip())
    kind = parsed.netloc or parsed.path.strip("/")
    if kind not in DEFAULTS:
        raise SimulatedLocationError(
            f"invalid simulated model {value!r}: use simulated://visual or simulated://textual"
        )
    query = dict(urllib.parse.parse_qsl(parsed.query))
    known = {"alpha_ms", "beta_ms", "dim", "dtype", "size", "input"}
    if unknown := set(query) - known:
        raise SimulatedLocationError(
            f"invalid simulated model {value!r}: unknown parameter(s) {', '.join(sorted(unknown))}"
        )
    try:
        alpha = float(query.get("alpha_ms", DEFAULTS[kind]["alpha_ms"])) / 1000
        beta = float(query.get("beta_ms", DEFAULTS[kind]["beta_ms"])) / 1000
        dim = int(query.get("dim", 512))
        size = int(query.get("size", 224))
    except ValueError:
        raise SimulatedLocationError(f"invalid simulated model {value!r}: not a number") from None
    dtype = query.get("dtype", "float16")
    if dtype not in ("float16", "float32") or alpha < 0 or beta < 0 or dim < 1 or size < 1:
        raise SimulatedLocationError(f"invalid simulated model {value!r}")
    pixel_input = query.get("input", "pixels") == "pixels"
    return SimulatedModel(kind, alpha, beta, size, 77, dim, dtype, pixel_input)


_ONNX_TYPES = {"float16": "tensor(float16)", "float32": "tensor(float)"}

# prctl(2): a thread's timer slack, how late the kernel may end its sleeps to batch wake-ups
# (50 µs by default). A CUDA wait ends when the GPU is done, not up to 50 µs later: measured here,
# a 1.03 ms sleep took 1.12 ms at the default slack and 1.07 ms at 1 ns (the rest is the wake-up).
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30


def wait_like_a_gpu(seconds: float) -> None:
    """Sleep `seconds` without the timer slack, then give the calling thread its own back: the
    simulated call is charged what it asks, not the kernel's rounding (the event loop makes
    lone calls itself and keeps its slack for everything else)."""
    slack = prctl(PR_GET_TIMERSLACK)
    if slack is None:
        time.sleep(seconds)
        return
    prctl(PR_SET_TIMERSLACK, 1)
    try:
        time.sleep(seconds)
    finally:
        if slack > 0:
            prctl(PR_SET_TIMERSLACK, slack)


class SimulatedSession:
    """Looks like runtime.OnnxSession to everything above it."""

    def __init__(
        self, model: SimulatedModel, providers: list[str], intra_op_threads: int = 0
    ) -> None:
        self.model = model
        self.path = model.location
        self.intra_op_threads = intra_op_threads
        self.providers = [PROVIDER]
        s = model.image_size
        if model.kind == "visual":
            if model.pixel_input:
                self.input_shape: list[int | str | None] = ["batch", s, s, 3]
                self.input_type = "tensor(uint8)"
            else:
                self.input_shape = ["batch", 3, s, s]
                self.input_type = "tensor(float)"
        else:
            self.input_shape = ["batch", model.context]
            self.input_type = "tensor(int32)"
        self.input_name = "input"
        self.outputs = [
            OutputInfo("output", _ONNX_TYPES[model.output_dtype], ["batch", model.output_dim])
        ]
        rng = np.random.default_rng(0 if model.kind == "visual" else 1)
        self._projection = rng.standard_normal((16, model.output_dim)).astype(np.float32)

    @property
    def dynamic_batch(self) -> bool:
        return True

    @property
    def loaded(self) -> bool:
        return True  # no weights to unload

    def run(
        self, batch: npt.NDArray[np.generic], output_names: list[str] | None = None
    ) -> list[npt.NDArray[np.floating]]:
        """Sleep α + β·b (no CPU, like a thread waiting on a CUDA call), then return rows that
        depend on each item (16 strided samples of it, projected), so a mixed-up batch shows."""
        n = len(batch)
        wait_like_a_gpu(self.model.call_seconds(n))
        flat = batch.reshape(n, -1)
        step = max(1, flat.shape[1] // 16)
        samples = flat[:, ::step][:, :16].astype(np.float32)
        if samples.shape[1] < 16:
            samples = np.pad(samples, ((0, 0), (0, 16 - samples.shape[1])))
        scaled = samples / (1.0 + np.abs(samples).max(axis=1, keepdims=True))
        out = np.tanh(scaled @ self._projection / 4.0)
        return [out.astype(self.model.output_dtype)]
