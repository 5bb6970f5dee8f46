"""The one home of device defaults: how each model uses the device (threads per session call,
K batches in flight) and how its queue is served (N, T). Explicit settings always win; every
default that depends on the device or the model is decided here and nowhere else, and
`describe_defaults` says it in words for the CLI help and the README's settings table.

Measured reasons (BENCHMARKS.md, README "Tuning"):
- CPU, both CLIP models (adaptive layout): a busy queue runs one single-threaded batch per usable
  CPU, which spends no time in ONNX Runtime's thread barriers (2 cores: 16.0 vs 12-14 images/s
  at 32 clients); a batch that starts with nothing else running or waiting runs on a second
  session with every core, as fast as the best single call (a lone thumbnail: ~86 ms, not
  ~140). The price: the second session's weights in memory.
- CPU, adaptive, visual: the every-core session's threads spin during its calls only
  (`session.force_spinning_stop`), and it takes a lone batch only while no other request is in
  the server. Spinning whenever the model was idle took CPU from /faces at Photofield's mixed
  load (thumbnails 1.53 and 1.63/s vs 1.90 and 1.73/s); kept for an idle server, a lone
  thumbnail was 4-5 ms faster (p50 96 vs 100, 90 vs 95 ms) with 4 clients unchanged and the
  mixed load no worse (BENCHMARKS.md "compare"). Not the textual model: a lone search gained
  nothing and 4 search clients lost (17.8 vs 19.8 req/s) when its every-core session was kept
  for an idle server. The batch sessions never spin.
- CPU without the adaptive layout: the visual model as above without the second session; the
  textual model one batch at a time across all cores; the face models take K from the
  non-visual layout and keep ONNX Runtime's threads.
- CPU, N = 8: the bare model gains little past batch 8 while every item waits for its batch.
- CPU, adaptive, visual: a batch waits up to 20 ms for the items it knows are coming — at 4
  clients, batches of 2.0 instead of 1.4 and 13.5 vs 12.5 images/s in alternating rounds.
- Accelerator: N = 64 amortizes kernel launches; two batches in flight overlap copies and compute;
  a lone request, alone in the server, to a model whose lone calls take at most 2 ms makes its
  call on the event loop (no thread hops: a lone thumbnail's round trip −0.3 ms).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from photofield_ai.batcher import BatchPolicy
from photofield_ai.config import Settings
from photofield_ai.runtime.cpus import total_memory_bytes, usable_cpus

CPU_MAX_BATCH_SIZE = 8
ACCELERATOR_MAX_BATCH_SIZE = 64
BATCH_TIMEOUT_MS = 2.0
ACCELERATOR_CONCURRENT_BATCHES = 2
CPU_VISUAL_THREADS = 1
# The adaptive layout, visual model: a batch about to start waits up to this long for the items
# it knows are coming (requests being decoded, clients just answered), so that four thumbnail
# clients on two cores run as two batches of two, not batches of one and three. Not the textual
# model: its per-item cost hardly falls with batch size (BENCHMARKS.md section 1), so waiting
# buys nothing there (measured: "compare" in BENCHMARKS.md).
WAIT_FOR_EXPECTED_S = 0.02
# CPU, adaptive: the every-core sessions' threads spin during their calls and stop when a call
# returns (no wake-up per parallel section). The visual one takes a lone batch only while no
# other request is in the server — never while /faces or decodes need the cores, where spinning
# cost thumbnails/s; the textual one takes any lone batch, as a search beside indexing is
# meant to win the cores (search first), and under that rule a lone search lost its every-core
# session whenever another search was being parsed (BENCHMARKS.md "compare").
ALONE_SPINS = True
ALONE_ONLY_IN_IDLE_SERVER = frozenset({"visual"})
# Accelerator: a lone batch, with no other request in the server, is called on the event loop
# itself while the model's recent lone calls took at most this long (batcher, inline_call_max_s):
# the hops to an inference thread and back cost ~0.3 ms of a lone request's round trip, a GPU's
# batch-1 call ~1 ms. Never on a CPU, where a lone call takes tens of ms on every core.
INLINE_CALL_MAX_MS = 2.0
# Search before indexing: an image batch waits at most this long for queued text to clear, so
# that a flood of searches cannot starve indexing.
SEARCH_FIRST_MAX_WAIT_S = 1.0
# The decode memory budget by default: this much, or an eighth of the machine's memory if less
# (no single image may then raise the memory by more than about this).
DECODE_BUDGET_MIB = 1024
# Images up to this many pixels may be decoded inline (see decode_inline): a 256-px thumbnail
# is 49 k; a 1-Mpx JPEG decodes and resizes in a few ms; larger ones always go to a decode thread.
INLINE_DECODE_PIXELS = 1_000_000
# Texts tokenized at once (anyio worker threads, never queued behind image decodes); requests
# with at most INLINE_TOKENIZE_CHARS characters of text (searches) are tokenized on the event
# loop instead (a 64-character word costs about 2 ms at worst; clip.tokenizer bounds longer ones).
TOKENIZE_THREADS = 2
INLINE_TOKENIZE_CHARS = 64


@dataclass(frozen=True)
class ThreadLayout:
    """How one model uses the device: threads per session call, session calls at once, and
    (adaptive layout) the threads of a second session for a batch that runs alone."""

    intra_op_threads: int  # 0: ONNX Runtime's default, one per physical core
    concurrent_batches: int  # K
    alone_threads: int | None = None  # None: no second session
    alone_spins: bool = False  # the second session's threads spin during its calls
    # It runs a lone batch only with no other request in the server
    # (BatchPolicy.alone_only_in_idle_server).
    alone_only_in_idle_server: bool = False


def thread_layout(settings: Settings, kind: str, accelerated: bool) -> ThreadLayout:
    threads = settings.intra_op_threads
    if accelerated:
        return ThreadLayout(
            threads or 0, settings.max_concurrent_batches or ACCELERATOR_CONCURRENT_BATCHES
        )
    cpus = usable_cpus()
    explicit = threads is not None or settings.max_concurrent_batches is not None
    if kind in ("visual", "textual") and adaptive(settings) and cpus > 1 and not explicit:
        # A busy queue: one single-threaded batch per core; a batch alone: every core.
        return ThreadLayout(
            1,
            cpus,
            0,
            alone_spins=ALONE_SPINS,
            alone_only_in_idle_server=kind in ALONE_ONLY_IN_IDLE_SERVER,
        )
    if kind == "visual":
        threads = threads or CPU_VISUAL_THREADS
        return ThreadLayout(threads, settings.max_concurrent_batches or max(1, cpus // threads))
    return ThreadLayout(threads or 0, settings.max_concurrent_batches or 1)


def adaptive(settings: Settings) -> bool:
    return settings.adaptive_layout is not False


def batch_policy(
    settings: Settings, kind: str, accelerated: bool, dynamic_batch: bool = True
) -> BatchPolicy:
    """The queue policy of one model; a model whose file fixes the batch axis runs batches of 1."""
    timeout_ms = settings.batch_timeout_ms
    layout = thread_layout(settings, kind, accelerated)
    adaptive_cpu = layout.alone_threads is not None
    return BatchPolicy(
        max_batch_size=(
            1
            if not dynamic_batch
            else settings.max_batch_size
            or (ACCELERATOR_MAX_BATCH_SIZE if accelerated else CPU_MAX_BATCH_SIZE)
        ),
        batch_timeout_s=(BATCH_TIMEOUT_MS if timeout_ms is None else timeout_ms) / 1000.0,
        max_concurrent_batches=layout.concurrent_batches,
        max_queue=settings.max_queue,
        queue_timeout_s=(
            settings.queue_timeout_ms / 1000.0 if settings.queue_timeout_ms is not None else None
        ),
        split_across_slots=adaptive_cpu,
        wait_for_expected_s=WAIT_FOR_EXPECTED_S if adaptive_cpu and kind == "visual" else 0.0,
        inline_call_max_s=inline_call_max_ms(settings, accelerated) / 1000.0,
        # With W > 1 the batchers live in the inference process, whose loop does no HTTP.
        inline_in_submit=workers(settings, accelerated) > 1,
        alone_only_in_idle_server=layout.alone_only_in_idle_server,
    )


def pixel_input(settings: Settings, accelerated: bool) -> bool:
    """Rewrite a float visual model to take uint8 pixels (runtime.graph)? By default with an
    accelerator, where the work around the model is the limit and float pixels cost ~0.8 ms of
    CPU per thumbnail (BENCHMARKS.md "compare"); not on a CPU, where that is under 1 % of a
    thumbnail's model call and the rewrite would add seconds to loading both of the adaptive
    layout's sessions."""
    if settings.pixel_input is not None:
        return settings.pixel_input
    return accelerated


def inline_call_max_ms(settings: Settings, accelerated: bool) -> float:
    if settings.inline_call_max_ms is not None:
        return settings.inline_call_max_ms
    return INLINE_CALL_MAX_MS if accelerated else 0.0


def with_concurrency(policy: BatchPolicy, k: int) -> BatchPolicy:
    return dataclasses.replace(policy, max_concurrent_batches=k)


def workers(settings: Settings, accelerated: bool) -> int:
    """HTTP worker processes. On a CPU the model is the limit and one process keeps everything
    in-process (no IPC); with an accelerator the work around the model is, and one event loop
    per usable CPU carries it (BENCHMARKS.md, "several processes")."""
    if settings.workers is not None:
        return settings.workers
    return usable_cpus() if accelerated else 1


def decode_threads(settings: Settings) -> int:
    """Images decoded at once in one worker: its share of the usable CPUs (at least 2 when
    there is one worker, so a slow decode never holds up the next)."""
    if settings.decode_threads is not None:
        return settings.decode_threads
    cpus = usable_cpus()
    count = settings.workers or 1
    return max(2, cpus) if count == 1 else max(1, -(-cpus // count))


def decode_inline(settings: Settings) -> bool:
    """Decode small images on the event loop itself, not on a decode thread? Yes when one of
    several worker processes: each has a core of its own, and a thread hop (wake-up, GIL
    hand-over) per image cost more than it saved — measured with the simulated accelerator,
    W=2, C=64 thumbnails: 524 vs 352 req/s, 3.7 vs 5.5 ms of CPU per request (BENCHMARKS.md).
    With one process, decode threads spread decoding over the cores — except for a request's
    one image when its model is idle (nothing queued, running or being decoded: the handler
    asks `ModelQueue.idle`): nothing then waits on the loop, and with the hops gone a lone
    thumbnail's round trip on the simulated accelerator fell by 0.3-0.4 ms of ~5 ms
    (BENCHMARKS.md "compare", "A lone image decoded on the event loop")."""
    return (settings.workers or 1) > 1


def decode_budget_bytes(settings: Settings) -> int:
    if settings.decode_memory_mb is not None:
        return settings.decode_memory_mb << 20
    return min(DECODE_BUDGET_MIB << 20, max(64 << 20, total_memory_bytes() // 8))


def describe_defaults() -> dict[str, str]:
    """The device defaults in words, by setting name."""
    return {
        "max_batch_size": f"{CPU_MAX_BATCH_SIZE} on CPU, {ACCELERATOR_MAX_BATCH_SIZE} on GPU",
        "batch_timeout_ms": f"{BATCH_TIMEOUT_MS:g}",
        "max_concurrent_batches": (
            "CPU: visual one per usable CPU ÷ threads (usable: the affinity mask, capped by a "
            f"container's CPU quota), textual 1; GPU: {ACCELERATOR_CONCURRENT_BATCHES}"
        ),
        "intra_op_threads": (
            f"CPU: visual {CPU_VISUAL_THREADS}, textual ONNX Runtime's choice (one per physical "
            "core); GPU: ONNX Runtime's choice"
        ),
        "inline_call_max_ms": f"{INLINE_CALL_MAX_MS:g} with an accelerator, 0 on CPU",
        "pixel_input": "on with an accelerator, off on CPU",
        "workers": "1 on CPU; with an accelerator, one per usable CPU",
        "adaptive_layout": "on (CPU, both CLIP models, unless threads or K are set)",
        "decode_threads": "with one worker, the usable CPUs (at least 2); else CPUs ÷ workers",
        "decode_memory_mb": (
            f"{DECODE_BUDGET_MIB}, or an eighth of the memory (a container's limit) if less"
        ),
    }
