"""The decode memory budget: decodes are admitted by the memory their declared size needs, so
that what the server holds for decoding is set by this budget, not by which files arrive.

One 140-byte animated WebP can declare a 9998² canvas; eight of them at once on /faces took
3.3 GB before this existed. Each decode reserves its estimated peak (imaging.decode.decode_cost)
before it starts and returns it when done; decodes that do not fit wait their turn, in order of
arrival; one that could never fit is refused (413) at once.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator

from photofield_ai.imaging.errors import ImageTooLargeError

MIB = 1 << 20


class DecodeBudget:
    """A byte budget shared by the decode threads. Blocking: used from those threads."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes < 1:
            raise ValueError("the decode budget must be positive")
        self.total_bytes = total_bytes
        self._used = 0
        self._waiting: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        """Decodes waiting for their share of the budget."""
        return len(self._waiting)

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` of the budget for the duration of the block (first come, first
        served); ImageTooLargeError if it can never fit."""
        if nbytes > self.total_bytes:
            raise ImageTooLargeError(
                f"decoding it needs about {nbytes / MIB:.0f} MiB, more than the decode memory "
                f"budget of {self.total_bytes / MIB:.0f} MiB"
            )
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or self._used + nbytes > self.total_bytes:
                self._changed.wait()
            self._waiting.popleft()
            self._used += nbytes
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()
