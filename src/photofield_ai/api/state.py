"""What the handlers need from the running server, gathered in one object on `app.state`."""

from __future__ import annotations

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
class ServerState:
    settings: Settings
    metrics: Metrics
    visual: EmbeddingModel | None
    textual: EmbeddingModel | None
    tokenizer: ClipTokenizer
    decode_limiter: anyio.CapacityLimiter
    ready: bool = False
    draining: bool = False
    active_requests: int = 0
