"""One typed settings object, read from PHOTOFIELD_AI_* environment variables once at start.

The first seven names, defaults and meanings are the original service's contract: Photofield
users' deployments set them, so they must keep working unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

PREFIX = "PHOTOFIELD_AI_"
CLIP_VARIANTS_URL = "https://huggingface.co/mlunar/clip-variants/resolve/main/models"
# The original README's default URL reads `.../main/modelclip-vit-...`: a typo for
# `.../main/models/clip-vit-...`.
DEFAULT_VISUAL_MODEL = CLIP_VARIANTS_URL + "/clip-vit-base-patch32-visual-{dtype}.onnx"
DEFAULT_TEXTUAL_MODEL = CLIP_VARIANTS_URL + "/clip-vit-base-patch32-textual-{dtype}.onnx"
RUNTIMES = ("all", "cpu")
# Face models (Photofield >= 0.24): RetinaFace MobileNet-v2 and EdgeFace-XXS, as the later
# original used through uniface. Non-commercial licences: downloaded at run time, never shipped.
DEFAULT_FACE_DETECTOR_MODEL = (
    "https://github.com/yakhyo/uniface/releases/download/weights/retinaface_mv2.onnx"
    "#sha256=3ca44c045651cabeed1193a1fae8946ad1f3a55da8fa74b341feab5a8319f757"
)
DEFAULT_FACE_RECOGNIZER_MODEL = (
    "https://github.com/yakhyo/edgeface-onnx/releases/download/weights/edgeface_xxs.onnx"
)


class SettingsError(ValueError):
    """An environment variable has a value we cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8081
    models_dir: Path = Path("models")
    # None: the default ViT-B/32 file in the dtype that is fastest on the device in use.
    visual_model: str | None = None
    textual_model: str | None = None
    # None: not set; PROVIDERS applies if given, else behaves as "all" (the original's rule).
    runtime: str | None = None
    providers: tuple[str, ...] | None = None

    # Dynamic batching (Triton vocabulary). None: a default chosen for the device (CPU or GPU).
    max_batch_size: int | None = None
    batch_timeout_ms: float | None = None
    max_concurrent_batches: int | None = None
    intra_op_threads: int | None = None
    max_queue: int = 1024
    queue_timeout_ms: float | None = None

    # Request limits.
    max_body_bytes: int = 64 * 1024 * 1024
    max_images_per_request: int = 64
    max_texts_per_request: int = 256
    max_image_pixels: int = 100_000_000

    # Faces. None: enabled, but a failure to load the face models only disables /faces (503);
    # set explicitly to 1 to make that failure fatal, to 0 to not load them at all.
    faces_enabled: bool | None = None
    face_detector_model: str = DEFAULT_FACE_DETECTOR_MODEL
    face_recognizer_model: str = DEFAULT_FACE_RECOGNIZER_MODEL
    face_score_threshold: float = 0.5
    face_max_faces: int = 100

    # Nice increment of the threads running image and face inference (indexing); 0: none.
    indexing_nice: int = 10
    decode_threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    shutdown_grace_s: float = 30.0
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(f.name, raw.strip())
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise SettingsError(
                f"{PREFIX}RUNTIME must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}"
            )
        if not 0 < self.port < 65536:
            raise SettingsError(f"{PREFIX}PORT must be between 1 and 65535, not {self.port}")
        for name in sorted(_INTS - {"port", "indexing_nice"}):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1, not {value}")
        for name in sorted(_FLOATS):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must not be negative, not {value}")
        if not 0 <= self.indexing_nice <= 19:
            raise SettingsError(
                f"{PREFIX}INDEXING_NICE must be between 0 and 19, not {self.indexing_nice}"
            )
        if not 0 <= self.face_score_threshold <= 1:
            raise SettingsError(
                f"{PREFIX}FACE_SCORE_THRESHOLD must be between 0 and 1, not "
                f"{self.face_score_threshold}"
            )
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise SettingsError(
                f"{PREFIX}LOG_LEVEL must be a logging level, not {self.log_level!r}"
            )


_INTS = {
    "port",
    "max_batch_size",
    "max_concurrent_batches",
    "intra_op_threads",
    "max_queue",
    "max_body_bytes",
    "max_images_per_request",
    "max_texts_per_request",
    "max_image_pixels",
    "decode_threads",
    "face_max_faces",
    "indexing_nice",
}
_FLOATS = {"batch_timeout_ms", "queue_timeout_ms", "shutdown_grace_s", "face_score_threshold"}
_BOOLS = {"faces_enabled"}


def _parse(name: str, raw: str) -> object:
    env_name = PREFIX + name.upper()
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{env_name} must be a whole number, not {raw!r}") from None
    if name in _FLOATS:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{env_name} must be a number, not {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{env_name} must be a finite number, not {raw!r}")
        return value
    if name in _BOOLS:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{env_name} must be 1 or 0, not {raw!r}")
    if name == "models_dir":
        return Path(raw)
    if name == "providers":
        providers = tuple(p.strip() for p in raw.split(",") if p.strip())
        if not providers:
            raise SettingsError(f"{env_name} must list at least one provider")
        return providers
    if name in ("runtime", "log_level"):
        return raw.lower()
    return raw
