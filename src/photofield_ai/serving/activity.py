"""How many HTTP requests the server is serving right now, for the two decisions that need to
know whether a lone request is alone in the server: may a batch of one make its session call on
the event loop (batcher, `inline_call_max_s`), and may it take a CPU model's spinning every-core
session (`alone_only_in_idle_server`). The batcher alone cannot tell: a request still being
parsed, or decoded for another model, is invisible to it, and holding the loop for a call (or
spinning on its cores) would delay exactly that request (BENCHMARKS.md "Tried and not kept: a
lone batch called on the event loop").

Probes and scrapes (/health, /ready, /metrics) are not counted: they never wait on a model.
One process (W=1): the HTTP middleware counts its own requests. Several (W > 1): each worker
publishes its count to shared memory (`ipc.QueueStats.requests`) and the inference process
reads the sum.
"""

from __future__ import annotations

from collections.abc import Callable


class RequestsInFlight:
    """Requests between their headers arriving and their response finishing, in this process.
    Plain integer updates on the event loop: no lock, no metric read back."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self.count = 0
        # Told every new count (a worker writes it to the inference process's shared memory).
        self.on_change = on_change

    def started(self) -> None:
        self.count += 1
        if self.on_change is not None:
            self.on_change(self.count)

    def finished(self) -> None:
        self.count -= 1
        if self.on_change is not None:
            self.on_change(self.count)

    def alone(self) -> bool:
        """At most one request in flight: the one asking."""
        return self.count <= 1
