"""Queues and dynamic batching across requests: the part that makes an accelerator pay off."""

from photofield_ai.batcher.batcher import (
    BatcherClosedError,
    BatchFailedError,
    BatchPolicy,
    DynamicBatcher,
    ModelQueue,
    QueueFullError,
    QueueTimeoutError,
)
from photofield_ai.batcher.gate import PriorityGate

__all__ = [
    "BatchFailedError",
    "BatchPolicy",
    "BatcherClosedError",
    "DynamicBatcher",
    "ModelQueue",
    "PriorityGate",
    "QueueFullError",
    "QueueTimeoutError",
]
