"""The engine: one batcher (with its executor and metrics) per loaded model, built by one loop
for the embedding models and the face models alike; started and drained with the server.

What the request path gets from it: `visual` / `textual` (a queue plus the family's pre-step),
`faces` (the face pipeline), the decode threads and the tokenize limiter. The policies it
applies — device defaults, search before indexing, lowered indexing threads — are decided in
`serving.layout`, `batcher.gate` and `runtime.threads`; this module only constructs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image

from photofield_ai.batcher import BatchPolicy, DynamicBatcher, ModelQueue, PriorityGate
from photofield_ai.batcher.batcher import RunBatch
from photofield_ai.config import Settings
from photofield_ai.faces.alignment import ALIGNED_SIZE
from photofield_ai.faces.detection import INPUT_SIZE as DETECTOR_SIZE
from photofield_ai.families import Encoder, ImageEncoder, ModelSpec, TextEncoder
from photofield_ai.families.base import Array
from photofield_ai.imaging.budget import DecodeBudget
from photofield_ai.imaging.decode import DecodeLimits
from photofield_ai.metrics import Metrics
from photofield_ai.runtime.session import Session
from photofield_ai.runtime.threads import lowered_executor
from photofield_ai.serving import layout
from photofield_ai.serving.activity import RequestsInFlight
from photofield_ai.serving.faces import FacePipeline, detector_runner, recognizer_runner
from photofield_ai.serving.idle import IdleUnloader
from photofield_ai.serving.loading import LoadedModels
from photofield_ai.serving.text_cache import TextEmbeddingCache

log = logging.getLogger("photofield_ai")

SearchRole = Literal["holds", "yields"]


@dataclass(frozen=True)
class ModelPlan:
    """One model to serve: how a batch runs, how its queue is served, what priority it has."""

    name: str
    run_batch: RunBatch
    policy: BatchPolicy
    intra_op_threads: int | str
    indexing: bool  # its calls run on lowered threads (runtime.threads)
    search_first: SearchRole | None  # text holds the gate, images yield to it
    info: dict[str, str]
    example: Callable[[], Array]  # a valid batch of one item
    run_alone: RunBatch | None = None  # the adaptive layout's every-core session
    warmup: Callable[[], None] | None = None
    spec: ModelSpec | None = None  # embedding models: what the family's pre-step needs
    sessions: tuple[Session, ...] = ()  # what idle unload may release


E = TypeVar("E", bound=Encoder)


@dataclass
class ServedEmbeddingModel(Generic[E]):
    """An embedding model as the request path sees it: its queue, its family's pre-step and,
    for text, the cache in front of the queue."""

    batcher: ModelQueue
    encoder: E
    cache: TextEmbeddingCache | None = None

    @property
    def spec(self) -> ModelSpec:
        return self.encoder.spec

    def embed(self, rows: Sequence[Array]) -> Awaitable[list[Array]]:
        """Queue the rows now (a full queue refuses at once); their outputs, in order.
        Cancelling the result drops what is still queued."""
        if self.cache is None:
            return self.batcher.submit_many(rows)
        return asyncio.ensure_future(self.cache.submit_through(self.batcher.submit_many, rows))


def plan_models(settings: Settings, models: LoadedModels) -> list[ModelPlan]:
    """Every model of the loaded set with its layout; no threads, loops or sessions started."""
    accelerated = models.accelerated
    plans = []
    for loaded in (models.visual, models.textual):
        if loaded is None:
            continue
        kind = loaded.kind
        plans.append(
            ModelPlan(
                kind,
                loaded.run,
                layout.batch_policy(settings, kind, accelerated),
                layout.thread_layout(settings, kind, accelerated).intra_op_threads
                or "ONNX Runtime's default number of",
                indexing=kind == "visual",
                search_first="yields" if kind == "visual" else "holds",
                info=loaded.encoder.spec.info(),
                example=functools.partial(loaded.encoder.example_input, 1),
                run_alone=loaded.run_alone if loaded.alone is not None else None,
                warmup=loaded.warmup,
                spec=loaded.encoder.spec,
                sessions=tuple(s for s in (loaded.session, loaded.alone) if s is not None),
            )
        )
    if models.faces is not None:
        for name, session, run, side in (
            (
                "face_detector",
                models.faces.detector,
                detector_runner(models.faces.detector),
                DETECTOR_SIZE,
            ),
            (
                "face_recognizer",
                models.faces.recognizer,
                recognizer_runner(models.faces.recognizer),
                ALIGNED_SIZE,
            ),
        ):
            plans.append(
                ModelPlan(
                    name,
                    run,
                    layout.batch_policy(settings, "faces", accelerated, session.dynamic_batch),
                    "ONNX Runtime's default number of",
                    indexing=True,
                    search_first=None,
                    info={
                        "path": str(session.path),
                        "providers": ",".join(session.providers),
                        "input_type": session.input_type,
                        "output_type": "",
                        "input_size": str(session.input_shape[-1]),
                    },
                    example=functools.partial(np.zeros, (1, 3, side, side), np.float32),
                    sessions=(session,),
                )
            )
    return plans


def may_hold_loop(alone_in_server: Callable[[], bool], sessions: Sequence[Session]) -> bool:
    """May a lone batch make its call on the event loop now? Only with no other request in the
    server, and with every session loaded: a call that would open a session again after an idle
    unload takes seconds, which its recent calls do not show."""
    return alone_in_server() and all(s.loaded for s in sessions)


class Engine:
    def __init__(
        self,
        settings: Settings,
        models: LoadedModels | None,
        metrics: Metrics,
        alone_in_server: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        # This process's HTTP requests (the middleware counts them), and whether the request
        # asking is the only one in the server: by default this count; the inference process
        # of a multi-process server passes the workers' counts instead (serving.activity).
        self.requests = RequestsInFlight()
        self.alone_in_server = alone_in_server or self.requests.alone
        self.visual: ServedEmbeddingModel[ImageEncoder] | None = None
        self.textual: ServedEmbeddingModel[TextEncoder] | None = None
        self.faces: FacePipeline | None = None
        # Image decoding is indexing work: threads at the indexing priority.
        self.decode_threads = lowered_executor(
            settings.indexing_nice, layout.decode_threads(settings), "image-decode"
        )
        self.decode_inline = layout.decode_inline(settings)
        # Every decode (embeddings and faces) is admitted against one memory budget. Pillow's
        # own decompression-bomb threshold follows our limit, which is checked first (so its
        # warning never fires for an image we accept).
        self.decode_limits = DecodeLimits(
            settings.max_image_pixels, DecodeBudget(layout.decode_budget_bytes(settings))
        )
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
        # Tokenizing is search work: never queued behind image decodes.
        self.tokenize_limiter = anyio.CapacityLimiter(layout.TOKENIZE_THREADS)
        self.text_cache = (
            TextEmbeddingCache(settings.text_cache_size, metrics)
            if settings.text_cache_size
            else None
        )
        self.idle_unloader: IdleUnloader | None = None
        self.started = False
        self.draining = False
        self.batchers: dict[str, DynamicBatcher] = {}
        self.plans: list[ModelPlan] = []
        self._executors: list[ThreadPoolExecutor] = []

    async def start(self) -> None:
        """Warm up and start a batcher per model; then the server is ready."""
        if self.models is not None:
            gate = PriorityGate(layout.SEARCH_FIRST_MAX_WAIT_S)
            self.plans = plan_models(self.settings, self.models)
            for plan in self.plans:
                self.batchers[plan.name] = await self._serve(plan, gate)
            self._expose(self.models)
            if self.settings.model_idle_unload_s is not None:
                self.idle_unloader = IdleUnloader(
                    self.settings.model_idle_unload_s,
                    {plan.name: plan.sessions for plan in self.plans},
                    self.metrics,
                )
                self.idle_unloader.start()
        self.started = True

    @property
    def ready(self) -> bool:
        """Serving, and not draining: what /ready answers."""
        return self.started and not self.draining

    async def _serve(self, plan: ModelPlan, gate: PriorityGate) -> DynamicBatcher:
        if plan.warmup is not None:
            await anyio.to_thread.run_sync(plan.warmup)
        policy = plan.policy
        log.info(
            "%s: max batch size %d, batch timeout %.1f ms, %d batch(es) in flight of %s "
            "intra-op thread(s) each%s, queue of %d%s",
            plan.name,
            policy.max_batch_size,
            policy.batch_timeout_s * 1000,
            policy.max_concurrent_batches,
            plan.intra_op_threads,
            "; a batch alone on every core" if plan.run_alone is not None else "",
            policy.max_queue,
            f", at nice +{self.settings.indexing_nice}" if plan.indexing else "",
        )
        self.metrics.set_model_info(plan.name, plan.info)
        self.metrics.queue_capacity.labels(plan.name).set(policy.max_queue)
        # Indexing models run on lowered threads (runtime.threads); search at normal priority.
        executor = lowered_executor(
            self.settings.indexing_nice if plan.indexing else 0,
            policy.max_concurrent_batches,
            f"{plan.name}-inference",
        )
        self._executors.append(executor)
        batcher = DynamicBatcher(
            plan.name,
            plan.run_batch,
            policy,
            self.metrics.for_batcher(plan.name),
            holds=gate if plan.search_first == "holds" else None,
            yields_to=gate if plan.search_first == "yields" else None,
            executor=executor,
            run_alone=plan.run_alone,
            inline_allowed=functools.partial(may_hold_loop, self.alone_in_server, plan.sessions),
            alone_allowed=self.alone_in_server,
        )
        batcher.start()
        return batcher

    def _expose(self, models: LoadedModels) -> None:
        b = self.batchers
        if models.visual is not None:
            assert isinstance(models.visual.encoder, ImageEncoder)
            self.visual = ServedEmbeddingModel(b["visual"], models.visual.encoder)
            log.info(models.visual.describe())
        if models.textual is not None:
            assert isinstance(models.textual.encoder, TextEncoder)
            self.textual = ServedEmbeddingModel(
                b["textual"], models.textual.encoder, self.text_cache
            )
            log.info(models.textual.describe())
        if models.faces is not None:
            self.faces = FacePipeline(
                b["face_detector"],
                b["face_recognizer"],
                self.decode_threads,
                self.settings.face_score_threshold,
                self.settings.face_max_faces,
            )
            log.info("Face detection and recognition ready")

    def start_draining(self) -> None:
        """Readiness turns false; requests are still served until the batchers close."""
        self.draining = True

    async def close(self) -> None:
        """Stop taking work; let queued and running batches finish within the grace period."""
        self.draining = True
        if self.idle_unloader is not None:
            await self.idle_unloader.close()
        for batcher in self.batchers.values():
            await batcher.close(self.settings.shutdown_grace_s)
        for executor in [*self._executors, self.decode_threads]:
            executor.shutdown(wait=False)
