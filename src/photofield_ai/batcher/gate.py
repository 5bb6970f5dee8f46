"""Search before indexing: text batches go ahead of image batches on a shared device.

While a library indexes, the visual model is saturated for hours; a search typed meanwhile must
not queue behind seconds of image batches. The textual batcher holds this gate while it has work
queued or running, and the visual batcher waits for the gate to clear before it starts a new
batch. A running image batch is never interrupted, so text waits at most for the remainder of
one image batch, sharing the cores with it meanwhile. So that a flood of searches cannot starve
indexing, an image batch waits at most `max_wait_s` for the gate.
"""

from __future__ import annotations

import asyncio
import contextlib


class PriorityGate:
    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._holders = 0
        self._clear = asyncio.Event()
        self._clear.set()

    def hold(self) -> None:
        self._holders += 1
        self._clear.clear()

    def release(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            self._holders = 0
            self._clear.set()

    @property
    def held(self) -> bool:
        return self._holders > 0

    async def wait_clear(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._clear.wait(), self.max_wait_s)
