"""Idle unload (Immich's MODEL_TTL): a home server runs Photofield next to everything else,
and ViT-B/32 float32 holds about 600 MB that a library indexed last week does not need.

Every model whose sessions have not run for PHOTOFIELD_AI_MODEL_IDLE_UNLOAD_S lets go of them;
the next batch opens them again (runtime.session.OnnxSession), and requests queued meanwhile
wait for that one load — nobody gets an error, the first request pays the load. Readiness
does not change: an unloaded model is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from photofield_ai.memory import trim_malloc
from photofield_ai.metrics import Metrics
from photofield_ai.runtime.session import OnnxSession, Session

log = logging.getLogger("photofield_ai")

# How often the watcher looks, at most (and at least twice per idle period).
CHECK_EVERY_S = 10.0


class IdleUnloader:
    """Watches the sessions of each model and unloads a model's sessions once all are idle."""

    def __init__(
        self, idle_s: float, models: dict[str, Sequence[Session]], metrics: Metrics
    ) -> None:
        self.idle_s = idle_s
        self.metrics = metrics
        # Simulated sessions hold no weights: only ONNX Runtime sessions are unloaded.
        self.models = {
            name: [s for s in sessions if isinstance(s, OnnxSession)]
            for name, sessions in models.items()
        }
        self._task: asyncio.Task[None] | None = None
        for name, sessions in self.models.items():
            for session in sessions:
                session.on_load = self._loaded_callback(name)
            if sessions:
                metrics.model_loaded.labels(name).set(1)

    def _loaded_callback(self, name: str) -> Callable[[float], None]:
        def loaded(seconds: float) -> None:
            self.metrics.model_load.labels(name).observe(seconds)
            self.metrics.model_loaded.labels(name).set(1)
            log.info("%s: loaded again in %.2f s", name, seconds)

        return loaded

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def check(self) -> list[str]:
        """Unload what has been idle long enough; the names of the models unloaded."""
        unloaded = []
        for name, sessions in self.models.items():
            # Each session on its own (the adaptive layout's every-core one may idle while a
            # busy queue runs the other); the model counts as unloaded once none is loaded.
            released = [s.unload_if_idle(self.idle_s) for s in sessions]
            if any(released) and not any(s.loaded for s in sessions):
                unloaded.append(name)
                self.metrics.model_unloads.labels(name).inc()
                self.metrics.model_loaded.labels(name).set(0)
                log.info("%s: unloaded after %.0f s without requests", name, self.idle_s)
        if unloaded:
            trim_malloc()
        return unloaded

    async def _watch(self) -> None:
        interval = min(CHECK_EVERY_S, self.idle_s / 2)
        while True:
            await asyncio.sleep(interval)
            self.check()
