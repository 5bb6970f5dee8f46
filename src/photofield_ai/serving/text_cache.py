"""The text-embedding cache: searches repeat (the same query, paging, several users), and a
repeated one should cost an HTTP round trip, not a model call.

Keyed by the model input — the token ids — so texts that tokenize alike ("Cat", "cat ",
"CAT") share an entry, and an entry is exactly what the model would return for that row. The
rows of one text model all have the same length, so the key drops the trailing zero padding
without losing anything. Least recently used entries go first. It lives on the event loop of
each HTTP process (no lock; a hit never touches a queue, a thread or the inference process),
so with several worker processes each holds its own.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from photofield_ai.families.base import Array
from photofield_ai.metrics import Metrics

SubmitMany = Callable[[Sequence[Array]], Awaitable[list[Array]]]


def cache_key(row: Array) -> bytes:
    """The token ids without the trailing padding (rows are of one length and dtype, so this
    is one-to-one)."""
    ids = np.asarray(row).reshape(-1)
    nonzero = np.flatnonzero(ids)
    end = int(nonzero[-1]) + 1 if nonzero.size else 0
    return ids[:end].tobytes()


class TextEmbeddingCache:
    """An LRU of model output rows by token ids; `capacity` entries at most."""

    def __init__(self, capacity: int, metrics: Metrics | None = None) -> None:
        if capacity < 1:
            raise ValueError("a cache needs room for at least one entry")
        self.capacity = capacity
        self._entries: OrderedDict[bytes, Array] = OrderedDict()
        self._metrics = metrics
        if metrics is not None:
            self._hits = metrics.text_cache_lookups.labels("hit")
            self._misses = metrics.text_cache_lookups.labels("miss")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Array | None:
        row = self._entries.get(key)
        if row is not None:
            self._entries.move_to_end(key)
        if self._metrics is not None:
            (self._hits if row is not None else self._misses).inc()
        return row

    def put(self, key: bytes, row: Array) -> None:
        # A copy: a row of the batch's output would keep the whole batch alive.
        self._entries[key] = np.array(row, copy=True)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        if self._metrics is not None:
            self._metrics.text_cache_entries.set(len(self._entries))

    def submit_through(
        self, submit_many: SubmitMany, rows: Sequence[Array]
    ) -> Awaitable[list[Array]]:
        """Answer what the cache holds; queue the rest now (as `submit_many` does, so a full
        queue still refuses at once) and remember their results. Cancelling the returned
        awaitable cancels the queued part."""
        keys = [cache_key(row) for row in rows]
        found = [self.get(key) for key in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        if not missing:
            done: asyncio.Future[list[Array]] = asyncio.get_running_loop().create_future()
            done.set_result([row for row in found if row is not None])
            return done
        # The same text twice in one request runs once.
        unique = list(dict.fromkeys(keys[i] for i in missing))
        first_row = {keys[i]: rows[i] for i in reversed(missing)}
        work = submit_many([first_row[key] for key in unique])
        return self._fill(found, keys, unique, work)

    async def _fill(
        self,
        found: list[Array | None],
        keys: list[bytes],
        unique: list[bytes],
        work: Awaitable[list[Array]],
    ) -> list[Array]:
        results = dict(zip(unique, await work, strict=True))
        for key, row in results.items():
            self.put(key, row)
        return [
            row if row is not None else results[key] for row, key in zip(found, keys, strict=True)
        ]
