"""One typed settings object, read from PHOTOFIELD_AI_* environment variables once at start.

Each field carries its meaning (`help`): the CLI's help, the README's settings table and the
error messages are generated from this one definition. A field whose default depends on the
device or the model family is None here ("device default") and gets its value from
`serving.layout` or the family — the one place each such default lives.

The first seven names, defaults and meanings are the original service's contract: Photofield
users' deployments set them, so they must keep working unchanged.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "PHOTOFIELD_AI_"
RUNTIMES = ("all", "cpu")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# Face models (Photofield >= 0.24): RetinaFace MobileNet-v2 and EdgeFace-XXS, as the later
# original used through uniface. Non-commercial licences: downloaded at run time, never shipped.
DEFAULT_FACE_DETECTOR_MODEL = (
    "https://github.com/yakhyo/uniface/releases/download/weights/retinaface_mv2.onnx"
    "#sha256=3ca44c045651cabeed1193a1fae8946ad1f3a55da8fa74b341feab5a8319f757"
)
# The digest as published for this release asset (5,133,128 bytes) by two independent public
# records; it could not be downloaded where this project is built to check it first-hand.
DEFAULT_FACE_RECOGNIZER_MODEL = (
    "https://github.com/yakhyo/edgeface-onnx/releases/download/weights/edgeface_xxs.onnx"
    "#sha256=dc674de4cbc77fa0bf9a82d5149558ab8581d82a2cd3bb60f28fd1a5d3ff8a2f"
)
# Which subcommands read a setting (the CLI lists them in each command's help).
SERVE, DOWNLOAD = "serve", "download"


class SettingsError(ValueError):
    """An environment variable has a value we cannot use; the message names it."""


def setting(
    default: Any = None,
    help: str = "",
    *,
    default_words: str | None = None,
    commands: tuple[str, ...] = (SERVE,),
    factory: Any = None,
    secret: bool = False,
) -> Any:
    """A settings field with its documentation. `default_words` says what the default is where
    it is not a plain value and not a device default (which `serving.layout` describes). A
    `secret` one is left out of the settings' repr, so it cannot reach a log line."""
    metadata = {"help": help, "default_words": default_words, "commands": commands}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


BOTH = (SERVE, DOWNLOAD)


@dataclass(frozen=True)
class Settings:
    host: str = setting("0.0.0.0", "listen address")
    port: int = setting(8081, "listen port")
    models_dir: Path = setting(Path("models"), "where model URLs are downloaded to", commands=BOTH)
    # None: the model family's default for the device in use.
    visual_model: str | None = setting(
        help="http(s) URL (downloaded once, atomically, with a progress bar), "
        "`hf://owner/repo/path/file.onnx` (huggingface-hub and its cache; `HF_HUB_OFFLINE` "
        "respected), a local path, or `none` to disable the model (its endpoint answers 503); "
        "append `#sha256=<hex>` to have the file checked",
        commands=BOTH,
    )
    textual_model: str | None = setting(help="same, for the text model", commands=BOTH)
    model_family: str = setting(
        "clip",
        "how items become model input and outputs embeddings: `clip` (the clip-variants files), "
        "or `toy` (the generated test family that proves the seam)",
        commands=BOTH,
    )
    runtime: str | None = setting(
        help="`all`: every available ONNX Runtime provider (GPU first); `cpu`: CPU only",
        default_words="`all`, unless `PROVIDERS` is set",
        commands=BOTH,
    )
    providers: tuple[str, ...] | None = setting(
        help="when `RUNTIME` is unset: explicit comma list, e.g. "
        "`CUDAExecutionProvider,CPUExecutionProvider`; unknown names are an error that lists the "
        "available ones",
        default_words="unset",
        commands=BOTH,
    )

    # Dynamic batching (Triton's words). None: the default for the device (serving.layout).
    max_batch_size: int | None = setting(help="N: most items in one session call")
    batch_timeout_ms: float | None = setting(
        help="T: how long a batch may wait to fill, only while other batches of the model are "
        "running (an idle model never waits)"
    )
    max_concurrent_batches: int | None = setting(help="K: session calls in flight per model")
    intra_op_threads: int | None = setting(
        help="threads one CLIP session call may use (sets both models; see Tuning)"
    )
    adaptive_layout: bool | None = setting(
        help="CPU: each CLIP model gets a second session with every core for a batch that runs "
        "alone (a lone request), beside the single-threaded batches a busy queue runs; `0`: one "
        "session (saves that session's memory: ~300-540 MB for ViT-B/32 float32 visual)"
    )
    pixel_input: bool | None = setting(
        help="the visual model takes uint8 pixels: a float CLIP visual file is rewritten as it "
        "loads, its normalization moved into the graph (runtime.graph), so the server neither "
        "computes nor copies float pixels (~0.8 ms of CPU per thumbnail on an accelerator); "
        "adds seconds to loading (ViT-B/32: +3 s float16, +6 s float32 on a 2-core VM)"
    )
    inline_call_max_ms: float | None = setting(
        help="a lone request alone in the server has its model called on the event loop, "
        "skipping the hops to an inference thread and back, while the model's last 8 lone calls "
        "each took at most this long (an accelerator's batch-1 call: ~1 ms); `0`: never"
    )
    max_queue: int = setting(
        1024, "items waiting per model; beyond it requests get 503 + `Retry-After` at once"
    )
    queue_timeout_ms: float | None = setting(
        help="items that waited longer are answered 503 without running",
        default_words="unset: none",
    )
    text_cache_size: int = setting(
        10_000,
        "text embeddings kept in memory (least recently used dropped; keyed by token ids, so "
        "texts that tokenize alike share one); a hit never queues; per worker process; 0: off",
    )
    model_idle_unload_s: float | None = setting(
        help="a model not used for this long is unloaded (its memory returned); the next "
        "request loads it again and waits for it",
        default_words="unset: never",
    )

    # Access.
    api_key: str | None = setting(
        help="when set, every endpoint but `/health` and `/ready` needs it: "
        "`Authorization: Bearer <key>`, or HTTP Basic with the key as the password (Photofield: "
        "`ai.host: http://photofield:<key>@host:8081`)",
        default_words="unset: open",
        secret=True,
    )
    metrics_open: bool = setting(
        False,
        "`1`: `/metrics` needs no key even when `API_KEY` is set (a scraper on a trusted net)",
    )

    # Request limits.
    max_body_bytes: int = setting(64 * 1024 * 1024, "larger bodies get 413 while streaming")
    max_text_body_bytes: int = setting(
        1024 * 1024, "larger `/text-embeddings` bodies get 413 (texts are cut to the context)"
    )
    max_images_per_request: int = setting(64, "file parts per request")
    max_texts_per_request: int = setting(256, "texts per request (413 beyond)")
    max_image_pixels: int = setting(
        100_000_000, "images declaring more pixels are refused (413) before decoding"
    )
    decode_memory_mb: int | None = setting(
        help="memory all image decodes at once may take (estimated from each image's declared "
        "size before decoding); a decode waits for room, one that could never fit gets 413"
    )

    # Faces. None: enabled, but a failure to load the face models only disables /faces (503).
    faces_enabled: bool | None = setting(
        help="`1`: load the face models, failing start-up if they cannot be loaded; unset: try, "
        "and if that fails answer 503 on `/faces` (logged); `0`: no faces",
        default_words="unset",
        commands=BOTH,
    )
    face_detector_model: str = setting(
        DEFAULT_FACE_DETECTOR_MODEL,
        "RetinaFace detector; a location like the CLIP models'",
        commands=BOTH,
    )
    face_recognizer_model: str = setting(
        DEFAULT_FACE_RECOGNIZER_MODEL, "face recognizer; as above", commands=BOTH
    )
    face_score_threshold: float = setting(0.5, "minimum detector confidence")
    face_max_faces: int = setting(100, "most faces returned per photo")
    faces_deadline_s: float = setting(
        20.0,
        "a `/faces` request not answered this long after it arrived is answered at once: 200, "
        "no faces for the photos not yet analysed, the reason in the error header (Photofield "
        "turns faces off for an hour after its 30 s timeout or any non-200); 0: none",
    )

    indexing_nice: int = setting(
        10,
        "nice increment (0–19) of the threads that decode images and run the image and face "
        "models, so that searches win the cores; 0: same priority as search",
    )
    decode_threads: int | None = setting(help="images decoded at once (per worker process)")
    workers: int | None = setting(
        help="HTTP worker processes; above 1, they share one inference process (the sessions "
        "and batchers, so batches form across workers) through shared memory"
    )
    # Connections and shutdown.
    header_timeout_s: float = setting(
        30.0,
        "a connection that has not sent complete request headers this long after connecting "
        "(or after its request's first byte) gets 408 and is closed",
    )
    body_timeout_s: float = setting(
        30.0, "a request body that makes no progress for this long: the connection is closed"
    )
    keep_alive_s: float = setting(
        100.0,
        "idle keep-alive connections are closed after this long (longer than Go's default "
        "90 s, so Photofield's client closes first and never races a closing server)",
    )
    max_connections: int = setting(
        2048,
        "connections at once (capped by the open-files limit); beyond it a new connection gets "
        "503 + `Retry-After` and is closed",
    )
    shutdown_delay_s: float = setting(
        5.0,
        "after SIGTERM, keep accepting connections this long (readiness already false) while "
        "the orchestrator stops routing here; Ctrl-C (SIGINT) skips it",
    )
    shutdown_grace_s: float = setting(
        30.0, "then, how long running and queued requests may take to finish"
    )
    log_level: str = setting("info", "one of " + ", ".join(LOG_LEVELS), commands=BOTH)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
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
        for name in sorted(_INTS - {"port", "indexing_nice", "text_cache_size"}):
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
        if self.text_cache_size < 0:
            raise SettingsError(
                f"{PREFIX}TEXT_CACHE_SIZE must not be negative, not {self.text_cache_size}"
            )
        if self.api_key is not None and (
            not self.api_key.isascii() or not self.api_key.isprintable() or " " in self.api_key
        ):
            raise SettingsError(
                f"{PREFIX}API_KEY must be printable ASCII without spaces (it travels in a header)"
            )
        if self.model_idle_unload_s is not None and self.model_idle_unload_s <= 0:
            raise SettingsError(
                f"{PREFIX}MODEL_IDLE_UNLOAD_S must be positive (unset: never unload), not "
                f"{self.model_idle_unload_s}"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )


def env_name(name: str) -> str:
    return PREFIX + name.upper()


def settings_fields() -> tuple[Field[Any], ...]:
    return fields(Settings)


def _fields_of_type(kind: type) -> frozenset[str]:
    """Names of the settings whose type is `kind` or `kind | None`: how each value is parsed."""
    hints = typing.get_type_hints(Settings)
    return frozenset(
        name
        for name, hint in hints.items()
        if hint is kind or (kind in typing.get_args(hint) and type(None) in typing.get_args(hint))
    )


_INTS = _fields_of_type(int)
_FLOATS = _fields_of_type(float)
_BOOLS = _fields_of_type(bool)


def _parse(name: str, raw: str) -> object:
    env = env_name(name)
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{env} must be a whole number, not {raw!r}") from None
    if name in _FLOATS:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{env} must be a number, not {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{env} must be a finite number, not {raw!r}")
        return value
    if name in _BOOLS:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{env} must be 1 or 0, not {raw!r}")
    if name == "models_dir":
        return Path(raw)
    if name == "providers":
        providers = tuple(p.strip() for p in raw.split(",") if p.strip())
        if not providers:
            raise SettingsError(f"{env} must list at least one provider")
        return providers
    if name in ("runtime", "log_level", "model_family"):
        return raw.lower()
    return raw
