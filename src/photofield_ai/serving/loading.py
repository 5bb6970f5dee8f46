"""Choose, fetch and load the models: the embedding models of the configured family and the two
face models, checked for what they are. The result is a `LoadedModels` set the engine serves."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from photofield_ai.config import Settings, SettingsError, env_name
from photofield_ai.families import FAMILIES, KINDS, Encoder, Kind, ModelFamily
from photofield_ai.families.base import Array, Embeddings
from photofield_ai.fetch import ModelDownloadError, ModelResolutionError, resolve_model
from photofield_ai.runtime import (
    ModelLoadError,
    OnnxSession,
    ProviderError,
    available_providers,
    select_providers,
)
from photofield_ai.runtime.graph import with_pixel_input
from photofield_ai.runtime.providers import uses_accelerator
from photofield_ai.runtime.session import Rewrite, Session
from photofield_ai.runtime.simulated import PROVIDER as SIMULATED_PROVIDER
from photofield_ai.runtime.simulated import (
    SimulatedLocationError,
    SimulatedModel,
    SimulatedSession,
    is_simulated,
)
from photofield_ai.runtime.simulated import parse as parse_simulated
from photofield_ai.runtime.threads import call_in_lowered_thread
from photofield_ai.serving.layout import pixel_input, thread_layout

log = logging.getLogger("photofield_ai")
# Start-up problems a user can fix: one line on stderr and a non-zero exit, never a traceback.
STARTUP_ERRORS = (
    SettingsError,
    ModelResolutionError,
    ModelLoadError,
    ProviderError,
)

DISABLED = frozenset({"none", "off", "disabled"})


def model_family(settings: Settings) -> ModelFamily:
    try:
        return FAMILIES[settings.model_family]
    except KeyError:
        raise SettingsError(
            f"PHOTOFIELD_AI_MODEL_FAMILY must be one of {', '.join(FAMILIES)}, not "
            f"{settings.model_family!r}"
        ) from None


@dataclass(frozen=True)
class ModelChoice:
    visual: str
    textual: str
    note: str | None  # why the defaults were chosen, for the startup log


def choose_models(settings: Settings, providers: list[str]) -> ModelChoice:
    """Explicit settings win; otherwise the family's defaults for this device."""
    family = model_family(settings)
    if settings.visual_model is not None and settings.textual_model is not None:
        return ModelChoice(settings.visual_model, settings.textual_model, None)
    if family.default_models is None:
        raise SettingsError(
            f"the {family.name} model family has no default models: set "
            "PHOTOFIELD_AI_VISUAL_MODEL and PHOTOFIELD_AI_TEXTUAL_MODEL"
        )
    accelerated = uses_accelerator(providers)
    defaults = family.default_models(accelerated)
    device = "an accelerator" if accelerated else "CPU only"
    return ModelChoice(
        settings.visual_model or defaults.visual,
        settings.textual_model or defaults.textual,
        f"Default models: {defaults.description} ({device}; set PHOTOFIELD_AI_VISUAL_MODEL and "
        "PHOTOFIELD_AI_TEXTUAL_MODEL to choose)",
    )


ModelLocation = Path | SimulatedModel


def accelerated(settings: Settings) -> bool:
    """Whether the models will run on an accelerator, without loading or fetching anything."""
    providers = select_providers(settings.runtime, settings.providers, available_providers())
    simulated = any(
        value is not None and is_simulated(value)
        for value in (settings.visual_model, settings.textual_model)
    )
    return simulated or uses_accelerator(providers)


OFFLINE_HINT = (
    "; without the internet, set PHOTOFIELD_AI_VISUAL_MODEL and PHOTOFIELD_AI_TEXTUAL_MODEL to "
    "local .onnx files (or hf:// references with HF_HUB_OFFLINE=1 and a filled cache), or try "
    'generated models with `make try` (README, "Try it offline")'
)


def fetch_model(
    value: str,
    setting_name: str,
    settings: Settings,
    progress: IO[str] | None = None,
    verify: bool = False,
) -> Path:
    """resolve_model, with errors that name the setting the location came from and, when a
    download failed, say what to do without one."""
    try:
        return resolve_model(value, settings.models_dir, progress, verify)
    except ModelDownloadError as exc:
        raise ModelDownloadError(f"{env_name(setting_name)}: {exc}{OFFLINE_HINT}") from None
    except ModelResolutionError as exc:
        raise ModelResolutionError(f"{env_name(setting_name)}: {exc}") from None


def _resolve(
    value: str, setting_name: str, settings: Settings, progress: IO[str] | None, verify: bool
) -> ModelLocation | None:
    if value.strip().lower() in DISABLED:
        return None
    if is_simulated(value):
        try:
            return parse_simulated(value)
        except SimulatedLocationError as exc:
            raise SettingsError(str(exc)) from None
    return fetch_model(value, setting_name, settings, progress, verify)


def resolve_models(
    settings: Settings, progress: IO[str] | None = None, verify: bool = False
) -> tuple[list[str], ModelLocation | None, ModelLocation | None]:
    """Select providers and turn both model settings into local files (downloading them).
    A model set to `none` is disabled: its endpoint answers 503."""
    available = available_providers()
    log.info("Available providers: %s", ", ".join(available))
    providers = select_providers(settings.runtime, settings.providers, available)
    log.info("Using providers: %s", ", ".join(providers))
    choice = choose_models(settings, providers)
    if choice.note:
        log.info(choice.note)
    visual = _resolve(choice.visual, "visual_model", settings, progress, verify)
    textual = _resolve(choice.textual, "textual_model", settings, progress, verify)
    if any(isinstance(m, SimulatedModel) for m in (visual, textual)):
        log.warning(
            "SIMULATED accelerator (%s): the embeddings are not real; for benchmarks and tests",
            ", ".join(m.location for m in (visual, textual) if isinstance(m, SimulatedModel)),
        )
        providers = [SIMULATED_PROVIDER, *providers]
    return providers, visual, textual


@dataclass(frozen=True)
class LoadedEmbeddingModel:
    """A session and the encoder of its family and kind: everything needed to serve it."""

    session: Session
    encoder: Encoder
    alone: Session | None = None  # the every-core session of the adaptive layout

    @property
    def kind(self) -> Kind:
        return self.encoder.spec.kind

    def run(self, batch: Array) -> Embeddings:
        return self.encoder.run(self.session, batch)

    def run_alone(self, batch: Array) -> Embeddings:
        return self.encoder.run(self.alone or self.session, batch)

    def warmup(self) -> None:
        """The first Run allocates arenas and, on GPUs, compiles kernels: not a user's problem."""
        self.run(self.encoder.example_input(1))
        if self.alone is not None:
            self.run_alone(self.encoder.example_input(1))

    def describe(self) -> str:
        spec = self.encoder.spec
        return (
            f"{spec.kind.capitalize()} inference ready ({spec.family}), input size "
            f"{spec.input_size}, type {spec.input_type}"
        )


def pixel_rewrite(family: ModelFamily, kind: Kind) -> Rewrite | None:
    """The rewrite that makes a `kind` model of `family` take uint8 pixels, if there is one."""
    normalization = family.image.pixel_normalization if kind == "visual" else None
    if normalization is None:
        return None
    scale, bias = normalization
    return functools.partial(with_pixel_input, scale=scale, bias=bias)


def load_embedding_model(
    location: ModelLocation,
    providers: list[str],
    kind: Kind,
    family: ModelFamily = FAMILIES["clip"],
    intra_op_threads: int = 0,
    session_type: type[OnnxSession] = OnnxSession,
    alone_threads: int | None = None,
    spin_during_calls: bool = False,
    alone_spins: bool = False,
    pixel_input: bool = False,
) -> LoadedEmbeddingModel:
    """Open the model and check that it is a `kind` model of `family`; with `alone_threads`,
    a second session of it with those threads (the adaptive layout), whose threads spin during
    its calls with `alone_spins`. `spin_during_calls` (runtime.session.open_session) is for the
    benchmarks' bare calls; the server's batch sessions never spin. With `pixel_input`, a float
    image model of a family that says how it normalizes is rewritten to take uint8 pixels
    (runtime.graph).
    `session_type` lets tests slow down or break the session (a subclass) while everything
    else stays real."""
    session: Session
    alone: Session | None = None
    if isinstance(location, SimulatedModel):
        session = SimulatedSession(location, providers, intra_op_threads)
    else:
        rewrite = pixel_rewrite(family, kind) if pixel_input else None
        session = session_type(location, providers, intra_op_threads, spin_during_calls, rewrite)
        if alone_threads is not None:
            alone = session_type(location, providers, alone_threads, alone_spins, rewrite)
    return LoadedEmbeddingModel(session, family.encoder(family.inspect(session, kind)), alone)


@dataclass(frozen=True)
class FaceModels:
    detector: OnnxSession
    recognizer: OnnxSession


@dataclass(frozen=True)
class LoadedModels:
    providers: list[str]
    visual: LoadedEmbeddingModel | None  # None: disabled with PHOTOFIELD_AI_VISUAL_MODEL=none
    textual: LoadedEmbeddingModel | None
    faces: FaceModels | None = None

    @property
    def accelerated(self) -> bool:
        return uses_accelerator(self.providers)


def load_models(settings: Settings, progress: IO[str] | None = None) -> LoadedModels:
    family = model_family(settings)
    providers, visual_path, textual_path = resolve_models(settings, progress)
    accelerated = uses_accelerator(providers)
    loaded: dict[Kind, LoadedEmbeddingModel | None] = {}
    for kind, path in zip(KINDS, (visual_path, textual_path), strict=True):
        if path is None:
            log.info("The %s model is disabled", kind)
            loaded[kind] = None
            continue
        log.info("Loading %s model: %s", kind, getattr(path, "location", path))
        # Indexing models are built in a lowered thread: their intra-op pools inherit it.
        layout = thread_layout(settings, kind, accelerated)
        loaded[kind] = call_in_lowered_thread(
            settings.indexing_nice if kind == "visual" else 0,
            functools.partial(
                load_embedding_model,
                path,
                providers,
                kind,
                family,
                layout.intra_op_threads,
                alone_threads=layout.alone_threads,
                alone_spins=layout.alone_spins,
                pixel_input=pixel_input(settings, accelerated),
            ),
        )
    faces = load_face_models(settings, providers, progress)
    return LoadedModels(providers, loaded["visual"], loaded["textual"], faces)


def resolve_face_models(
    settings: Settings, progress: IO[str] | None = None, verify: bool = False
) -> tuple[Path, Path]:
    return (
        fetch_model(
            settings.face_detector_model, "face_detector_model", settings, progress, verify
        ),
        fetch_model(
            settings.face_recognizer_model, "face_recognizer_model", settings, progress, verify
        ),
    )


def detector_output_roles(detector: OnnxSession) -> dict[int, int]:
    """Output index by the size of its last axis: 4 = box offsets, 2 = scores, 10 = landmarks."""
    roles: dict[int, int] = {}
    for i, output in enumerate(detector.outputs):
        last = output.shape[-1] if output.shape else None
        if isinstance(last, int) and last in (2, 4, 10):
            roles[last] = i
    return roles


def check_face_models(detector: OnnxSession, recognizer: OnnxSession) -> None:
    shape = detector.input_shape
    if len(shape) != 4 or shape[1] != 3 or sorted(detector_output_roles(detector)) != [2, 4, 10]:
        raise ModelLoadError(
            f"{detector.path} is not a RetinaFace detector (input [1, 3, H, W]; outputs loc, "
            "conf, landmarks)"
        )
    if recognizer.input_shape[1:] != [3, 112, 112]:
        raise ModelLoadError(
            f"{recognizer.path} is not a face recognizer with [batch, 3, 112, 112] input"
        )


def load_face_models(
    settings: Settings, providers: list[str], progress: IO[str] | None = None
) -> FaceModels | None:
    """Explicit PHOTOFIELD_AI_FACES_ENABLED=1: a failure is fatal. Unset (the default): the
    server still starts, /faces answers 503, and the log says why."""
    if settings.faces_enabled is False:
        log.info("Faces are disabled")
        return None
    try:
        detector_path, recognizer_path = resolve_face_models(settings, progress)
        nice = settings.indexing_nice
        log.info("Loading face detector: %s", detector_path)
        detector = call_in_lowered_thread(nice, lambda: OnnxSession(detector_path, providers))
        log.info("Loading face recognizer: %s", recognizer_path)
        recognizer = call_in_lowered_thread(nice, lambda: OnnxSession(recognizer_path, providers))
        check_face_models(detector, recognizer)
    except (ModelResolutionError, ModelLoadError) as exc:
        if settings.faces_enabled:
            raise
        log.warning(
            "Faces unavailable, /faces answers 503: %s (set PHOTOFIELD_AI_FACES_ENABLED=0 "
            "to not load them, or =1 to make this fatal)",
            exc,
        )
        return None
    return FaceModels(detector, recognizer)
