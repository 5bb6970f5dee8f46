"""A response in one write: the connection's transport as uvicorn sees it, holding a write back
until the next one (or the end of the event loop's turn) so that a response's head and body
leave in one system call and one TCP segment.

uvicorn writes a response's head when the app sends `http.response.start` and its body on
`http.response.body`: two `send` calls, two segments. A client reading the head then wakes up a
second time for the body (Go's net/http does, and so does any asyncio reader), and the server
makes a second system call; on a lone request that is a wake-up and a few dozen µs of a round
trip whose every step counts (BENCHMARKS.md, "one write per response"). Holding the head back
costs nothing: the body follows within the same turn of the loop.

Only the latest write is held, and never past the turn that wrote it: a streamed body's chunks
still leave as they come, one turn at most behind.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport(asyncio.Transport):
    """Wraps a connection's transport; everything but the writes goes straight through."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    # -- writes -------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._held is None:
            self._held = bytes(data)
            # Whatever is still held when this turn ends (often nothing: the body took it).
            self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        self._transport.write(held + bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def flush(self) -> None:
        """Write what is held now (nothing, to a connection already closing)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    # -- closing: what is held goes first, unless the connection is aborted ------------------
    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    # -- everything else --------------------------------------------------------------------
    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()
