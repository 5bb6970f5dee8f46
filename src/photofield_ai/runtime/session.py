"""One ONNX Runtime session with this project's options, for any single-input model.

Model files come in float32, float16 and quantized flavours: image input may be float16 or
float32 (or uint8 pixels, for a model that normalizes in its graph), token input int32 or int64.
Everything above this module hands over float32 images (or uint8 pixels) and int64 tokens;
`OnnxSession.run` casts them to what the file declares. What a model *is* (a CLIP
tower, a face detector) is decided above, by the family or pipeline that uses it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

log = logging.getLogger(__name__)

Array = npt.NDArray[np.generic]

NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
}

# ONNX Runtime >= 1.23 on x86-64 dereferences a null schema inside the NchwcTransformer while
# creating a session for float16 graphs with a Transpose → MatMul chain on a 3-d dynamic tensor
# (onnxruntime issue #28392): the process dies with SIGSEGV, no exception. The float16
# clip-variants files, made with onnxconverter-common, have such chains, and they are the default
# models. The transformer only rewrites convolutions into the NCHWc layout and CLIP has one
# (the patch embedding), so turning it off costs nothing measurable and is done for every model.
DISABLED_OPTIMIZERS = ("NchwcTransformer",)


@dataclass(frozen=True)
class OutputInfo:
    """A model output's name, element type and shape, copied out of ONNX Runtime's NodeArg:
    a NodeArg keeps its whole session alive (weights included), so holding one would make an
    idle unload free nothing."""

    name: str
    type: str
    shape: list[int | str | None]


class ModelLoadError(RuntimeError):
    """The file is missing, not ONNX, or not the model it was configured as; one line."""


# The model's graph rewritten before it is loaded (runtime.graph): (model, destination) → True
# when the rewritten model was saved to the destination, False to load the model as it is.
Rewrite = Callable[[Path, Path], bool]


def open_session(
    path: Path,
    providers: list[str],
    intra_op_threads: int = 0,
    spin_during_calls: bool = False,
    rewrite: Rewrite | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session with this project's options, or a one-line ModelLoadError.
    `intra_op_threads` = 0 lets ONNX Runtime use one thread per physical core; `rewrite`
    changes the graph first (runtime.graph).

    Worker threads do not spin by default: spinning threads burn the cores the other model's
    session and the decoders need. With `spin_during_calls` they spin between the parallel
    sections of a call — no wake-up per section — and stop the moment the call returns
    (ONNX Runtime's `session.force_spinning_stop`): the benchmarks' bare batch-1 calls try it
    (serving.layout says why the server does not)."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if spin_during_calls else "0"
    )
    if spin_during_calls:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        with contextlib.ExitStack() as scratch:
            load = path if rewrite is None else _rewritten(path, rewrite, scratch)
            return ort.InferenceSession(
                str(load),
                options,
                providers=providers,
                disabled_optimizers=list(DISABLED_OPTIMIZERS),
            )
    except Exception as exc:  # onnxruntime raises several private exception types
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise ModelLoadError(f"cannot load model {path}: {first_line}") from None


def _rewritten(path: Path, rewrite: Rewrite, scratch: contextlib.ExitStack) -> Path:
    """The file to load: `path` rewritten into a temporary directory that lasts as long as
    `scratch` (ONNX Runtime has read it all once the session exists), or `path` itself when
    there is nothing to rewrite or no room for the copy (the model as it is still works)."""
    try:
        directory = scratch.enter_context(tempfile.TemporaryDirectory(prefix="photofield-ai-"))
        target = Path(directory) / path.name
        if rewrite(path, target):
            return target
    except OSError as exc:
        log.warning("%s: not rewritten (%s); loading it as it is", path, exc)
    return path


class Session(Protocol):
    """What everything above the runtime uses of a loaded model (OnnxSession, and the
    simulated accelerator's SimulatedSession)."""

    path: Any
    input_name: str
    input_shape: list[int | str | None]
    input_type: str
    outputs: list[OutputInfo]
    providers: list[str]

    @property
    def dynamic_batch(self) -> bool: ...

    @property
    def loaded(self) -> bool:
        """False after an idle unload: the next call opens the session again first."""
        ...

    def run(
        self, batch: Array, output_names: list[str] | None = None
    ) -> list[npt.NDArray[np.floating]]: ...


class OnnxSession:
    """A loaded single-input model. `run` is thread-safe (ONNX Runtime sessions allow
    concurrent Run calls), so K batches in flight share one copy of the weights.

    It can also let go of its ONNX Runtime session when idle (`unload_if_idle`) and open it
    again on the next `run`; callers that arrive during that load wait for the same load."""

    def __init__(
        self,
        path: Path,
        providers: list[str],
        intra_op_threads: int = 0,
        spin_during_calls: bool = False,
        rewrite: Rewrite | None = None,
    ) -> None:
        self.path = path
        self.intra_op_threads = intra_op_threads
        self.spin_during_calls = spin_during_calls
        # Applied again at every load after an idle unload: the rewritten bytes are not kept.
        self.rewrite = rewrite
        self._requested_providers = list(providers)
        self._session: ort.InferenceSession | None = open_session(
            path, providers, intra_op_threads, spin_during_calls, rewrite
        )
        self._lock = threading.Lock()
        self._running = 0
        self.last_used = time.monotonic()
        # Called with the seconds a load took, after each load that follows an unload.
        self.on_load: Callable[[float], None] | None = None
        # Plain copies only: ONNX Runtime's NodeArgs would keep the session alive (OutputInfo).
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{path}: expected one input, found {len(inputs)}")
        self.outputs = [
            OutputInfo(o.name, o.type, list(o.shape)) for o in self.session.get_outputs()
        ]
        if not self.outputs:
            raise ModelLoadError(f"{path}: the model has no outputs")
        self.input_name: str = inputs[0].name
        self.input_shape: list[int | str | None] = list(inputs[0].shape)
        self.input_type: str = inputs[0].type
        del inputs
        if self.input_type not in NUMPY_TYPES:
            raise ModelLoadError(f"{path}: unsupported input type {self.input_type}")
        self.providers: list[str] = list(self.session.get_providers())
        self._input_dtype = NUMPY_TYPES[self.input_type]

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    @property
    def session(self) -> ort.InferenceSession:
        """The ONNX Runtime session, opened again first if it was unloaded."""
        with self._lock:
            return self._open()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def _open(self) -> ort.InferenceSession:
        """Under the lock: the session, loading it if it was unloaded."""
        if self._session is None:
            started = time.perf_counter()
            self._session = open_session(
                self.path,
                self._requested_providers,
                self.intra_op_threads,
                self.spin_during_calls,
                self.rewrite,
            )
            if self.on_load is not None:
                self.on_load(time.perf_counter() - started)
        return self._session

    def run(
        self, batch: Array, output_names: list[str] | None = None
    ) -> list[npt.NDArray[np.floating]]:
        """The outputs (all, or those named) of one stacked batch, in the model's own dtypes."""
        feed = batch if batch.dtype == self._input_dtype else batch.astype(self._input_dtype)
        with self._lock:
            session = self._open()
            self._running += 1
        try:
            outputs: list[npt.NDArray[np.floating]] = session.run(
                output_names, {self.input_name: feed}
            )
        finally:
            with self._lock:
                self._running -= 1
                self.last_used = time.monotonic()
        return outputs

    def unload_if_idle(self, idle_s: float) -> bool:
        """Let go of the ONNX Runtime session (its weights and arenas) if no call is running
        and none has run for `idle_s`. Never waits: a load in progress means "not idle"."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._session is None or self._running or time.monotonic() - self.last_used < idle_s:
                return False
            self._session = None
            return True
        finally:
            self._lock.release()
