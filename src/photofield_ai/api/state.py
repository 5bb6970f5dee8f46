"""What the handlers need from the running server, gathered in one object on `app.state`."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field

import anyio

from photofield_ai.batcher import DynamicBatcher
from photofield_ai.clip.tokenizer import ClipTokenizer
from photofield_ai.config import Settings
from photofield_ai.metrics import Metrics


@dataclass
class EmbeddingModel:
    """A loaded model as the API sees it: a queue to submit items to and its input size."""

    batcher: DynamicBatcher
    input_size: int
    info: dict[str, str] = field(default_factory=dict)


@dataclass
class FacePipeline:
    """The two face models as the API sees them (see api/faces.py)."""

    detector: DynamicBatcher  # items [3, 640, 640]; results [N, 16] = loc | conf | landmarks
    recognizer: DynamicBatcher  # items [3, 112, 112]; results [D] embeddings
    score_threshold: float
    max_faces: int


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    visual: EmbeddingModel | None
    textual: EmbeddingModel | None
    tokenizer: ClipTokenizer
    # Image decoding is indexing work: threads at the indexing priority (runtime/priority.py).
    decode_threads: Executor
    # Tokenizing is search work: never queued behind image decodes.
    tokenize_limiter: anyio.CapacityLimiter
    faces: FacePipeline | None = None
    ready: bool = False
    draining: bool = False
    active_requests: int = 0
