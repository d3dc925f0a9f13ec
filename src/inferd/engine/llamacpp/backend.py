"""LlamaCppBackend: one GGUF model served through llama-cpp-python's low-level API.

The constructor blocks (model load, context creation); the daemon calls it through
asyncio.to_thread. Generation runs on a worker thread that owns the generation
context and decodes up to `parallel` requests together (continuous batching,
`scheduler.py`, ADR 0018); the backend asks the daemon for that many admission
permits. Embeddings, when enabled, run on a second thread with its own context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from pathlib import Path

import llama_cpp.llama_cpp as L

from ...proto.admin import SequenceSlot
from ...proto.embed import EmbedResolved
from ..backend import (
    AttachmentUnsupported,
    Backend,
    BackendCapabilities,
    BackendInvalidRequest,
    EmbedResult,
    NotReady,
    Unsupported,
)
from ..events import EventStream
from ..request import GenerationRequest
from .embed import EmbedContext, EmbedJob
from .native import (
    bos_piece,
    eos_piece,
    init_backend,
    load_model,
    meta_str,
    probe_accelerator,
    resolve_gpu_layers,
    system_features,
    tokenize,
)
from .amx import cpu_features_used
from .sampling import GrammarError, SamplingParams, check_grammar_limits, parse_grammar
from .scheduler import BatchScheduler
from .settings import DEFAULT_PARALLEL, LlamaCppSettings, available_cores
from .chatting import ChatPlan, ChatStyle, output_grammar
from .templates import BUILTIN, KNOWN_TEMPLATES, ChatRenderer, RenderError, resolve_renderer
from .bridge import WorkerStream, loop_emitter
from .job import GenerationJob
from .slots import GenerationContext

log = logging.getLogger("inferd.engine.llamacpp")

#: The engines loaded in this process (the daemon's, with `--in-process`, or a bench's).
_engines: "weakref.WeakSet[LlamaCppBackend]" = weakref.WeakSet()


def _warn_if_threads_outnumber_cores(new: "LlamaCppBackend") -> None:
    """Two engines in one process each decode on their own thread with a team of
    OpenMP threads; once the teams together outnumber the cores, libgomp stops spinning
    at its barriers and sleeps, and every engine's decode slows (measured on 2 cores,
    Gemma 3 270M: 46 tok/s alone, 30 tok/s each once a second engine had decoded). The
    runner mode, the default, gives each model a process of its own (ADR 0025)."""
    live = [e for e in _engines if e is not new and e._ready]
    if not live:
        return
    threads = sum(max(e.settings.threads(), e.settings.threads_batch()) for e in [*live, new])
    cores = available_cores()
    if threads > cores:
        log.warning("%d llama.cpp engines in one process use %d threads on %d cores: llama.cpp's "
                    "OpenMP threads stop spinning and each engine decodes slower than alone (a third "
                    "slower measured on 2 cores); serve without --in-process to give each model a "
                    "runner process of its own",
                    len(live) + 1, threads, cores)


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self, settings: LlamaCppSettings) -> None:
        self.settings = settings
        self._ready = False
        self._gen: BatchScheduler | None = None
        #: The embedding context: created, used and freed on the generation thread.
        self._embed_ctx: EmbedContext | None = None
        # Pre-stream work reads the vocabulary off the workers' threads; close() must
        # not free the model under it.
        self._prep_cond = threading.Condition()
        self._preparing = 0
        path = str(Path(settings.model_path))
        if settings.chat_template is not None and settings.chat_template.strip().lower() not in KNOWN_TEMPLATES:
            # Refuse a typo before spending seconds on the model load.
            raise ValueError(
                f"unknown chat_template {settings.chat_template!r}; known: {', '.join(KNOWN_TEMPLATES)}"
            )
        #: What llama.cpp's AMX kernels may do in this process, and why (ADR 0019).
        self.amx = init_backend(settings.verbose, settings.amx)
        self._accelerator = probe_accelerator()
        # On CPU nothing can be offloaded, whatever the config says (upstream §3.1 step 3).
        n_gpu_layers = 0 if self._accelerator.kind == "cpu" else settings.n_gpu_layers
        repack = self.amx.extra_bufts and not settings.batch_invariant
        self._model = load_model(path, n_gpu_layers, repack=repack)
        try:
            self._setup(settings, path, n_gpu_layers)
        except BaseException:
            self.close(timeout=5.0)
            raise
        self._ready = True
        _warn_if_threads_outnumber_cores(self)
        _engines.add(self)

    def _setup(self, settings: LlamaCppSettings, path: str, n_gpu_layers: int) -> None:
        model = self._model
        self._vocab = L.llama_model_get_vocab(model)
        named = settings.source_path or path
        self.label = settings.label or meta_str(model, "general.name") or Path(named).stem or "llamacpp"
        self.architecture = meta_str(model, "general.architecture")
        n_layer_all = L.llama_model_n_layer(model) + L.llama_model_n_layer_nextn(model)
        self._gpu_layers = resolve_gpu_layers(n_gpu_layers, n_layer_all, self._accelerator.kind)
        self._bos_piece = bos_piece(self._vocab)
        renderer: ChatRenderer | None = resolve_renderer(
            settings.chat_template,
            gguf_template=meta_str(model, "tokenizer.chat_template"),
            architecture=self.architecture,
            bos_token=self._bos_piece,
            eos_token=eos_piece(self._vocab),
        )
        self._chat = ChatStyle(renderer) if renderer is not None else None
        if renderer is None and not settings.embed:
            log.warning("%s has no chat template and no built-in renderer: generation will be refused", path)
        gen = self._start_generation(model, settings)
        self.n_ctx: int = gen.n_ctx
        #: Requests decoded together; the daemon gives the backend this many permits.
        self.concurrency = self.parallel = gen.n_seq
        self._gen_state = gen
        #: Whether the generation context runs flash attention (None: llama.cpp did not say).
        self.flash_attn = gen.flash_attn
        #: The CPUs the decode threads are kept on (cpu_strict); [] = the kernel's choice.
        self.decode_cpus = gen.cpus
        if settings.embed:
            label = self.label
            self._embed_ctx = self._gen.call(lambda: EmbedContext(model, settings, label))
            self.n_embd: int | None = self._embed_ctx.n_embd
        else:
            self.n_embd = None

    def _start_generation(self, model: L.llama_model_p, settings: LlamaCppSettings) -> GenerationContext:
        """The generation thread and its context with `parallel` sequences.

        Left to its default, `parallel` is halved until the context (whose cache holds
        n_ctx for every sequence) can be created: a config that loaded before
        parallel sequences existed still loads (ADR 0018).
        """
        n_seq = settings.parallel or DEFAULT_PARALLEL
        while True:
            self._gen = BatchScheduler(
                "inferd-llamacpp-generate",
                lambda n=n_seq: GenerationContext(model, settings, n),
                self._close_contexts,
                prefill_chunk=settings.prefill_chunk,
            )
            try:
                return self._gen.start()
            except ValueError:
                if settings.parallel is not None or n_seq == 1:
                    raise
                log.warning("no room for %d sequences of %d tokens; trying %d", n_seq, settings.n_ctx, n_seq // 2)
                n_seq //= 2

    def _seed(self, asked: int | None) -> int:
        """The request's seed; else the configured one; else a fresh random one."""
        if asked is not None:
            return asked
        if self.settings.seed is not None:
            return self.settings.seed
        return secrets.randbits(32)

    def _close_contexts(self, ctx: GenerationContext) -> None:
        """On the generation thread as it exits: both contexts it owns."""
        if self._embed_ctx is not None:
            self._embed_ctx.close()
        ctx.close()

    # ---- Backend contract ----------------------------------------------------------

    def ready(self) -> bool:
        return self._ready

    def capabilities(self) -> BackendCapabilities:
        acc = self._accelerator
        return BackendCapabilities(
            v2=self._chat is not None,
            vision=False,
            audio=False,
            # Any model can be offered tools: its template's format, or our built-in one.
            tools=self._chat is not None,
            thinking=self._chat is not None and self._chat.thinks,
            embed=self._embed_ctx is not None,
            accelerator=acc.kind,
            gpu_layers=self._gpu_layers,
            device_name=acc.device_name,
            vram_total_bytes=acc.vram_total_bytes,
            model=self.label,
            n_ctx=self.n_ctx,
            parallel=self.parallel,
            flash_attn=self.flash_attn,
            n_threads=self.settings.threads(),
            n_threads_batch=self.settings.threads_batch(),
            decode_cpus=self.decode_cpus,
            amx=self.amx.setting,
            amx_reason=self.amx.reason,
            cpu_features=cpu_features_used(system_features()),
        )

    def observe_sequences(self, sink: Callable[[list[SequenceSlot]], None] | None) -> None:
        """Have `sink` called (from the decode thread) with the running sequences whenever they change."""
        if self._gen is not None:
            self._gen.observe(sink)

    @property
    def decode_steps(self) -> int:
        """Scheduler steps (llama_decode calls) so far: progress a watchdog can see."""
        return self._gen.steps if self._gen is not None else 0

    def running_sequences(self) -> list[SequenceSlot]:
        """The requests decoding now, by slot."""
        return self._gen.running() if self._gen is not None else []

    @property
    def chat_template(self) -> str | None:
        """Name of the renderer in use ("model" = the GGUF's own template)."""
        return self._chat.renderer.name if self._chat is not None else None

    @property
    def last_prompt_evaluated(self) -> int:
        """Prompt tokens the most recent generation evaluated (the rest came from the KV cache)."""
        return self._gen_state.last_prompt_evaluated

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt text for a plain conversation, exactly as generation would feed it."""
        if not messages:
            raise BackendInvalidRequest("messages must not be empty")
        try:
            return self._style().renderer.render(messages)
        except RenderError as exc:
            raise BackendInvalidRequest(f"chat template render failed: {exc}") from None

    def _style(self) -> ChatStyle:
        if self._chat is None:
            raise BackendInvalidRequest(
                "model has no chat template; set chat_template to one of " + ", ".join(BUILTIN)
            )
        return self._chat

    def tokenize_prompt(self, prompt: str) -> list[int]:
        # A template that writes the BOS itself must not get a second one from the tokenizer.
        has_bos = bool(self._bos_piece) and prompt.startswith(self._bos_piece)
        return tokenize(self._vocab, prompt, add_special=not has_bos, parse_special=True)

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], ChatPlan]:
        """Pre-stream work (off the event loop): everything that can refuse the request."""
        with self._prep_cond:
            if not self._ready:
                raise NotReady()
            self._preparing += 1
        try:
            return self._prepare_ready(request)
        finally:
            with self._prep_cond:
                self._preparing -= 1
                self._prep_cond.notify_all()

    def _prepare_ready(self, request: GenerationRequest) -> tuple[list[int], ChatPlan]:
        if any(m.media for m in request.messages) or request.attachments:
            raise AttachmentUnsupported("this backend has no media encoder: attachments are not supported")
        if request.grammar:
            try:
                check_grammar_limits(request.grammar)  # F-11: a client's own grammar
            except GrammarError as exc:
                raise BackendInvalidRequest(str(exc)) from None
        if request.prompt is not None:
            plan = ChatPlan(request.prompt, output_grammar(request), ChatStyle.raw_parser)
        else:
            plan = self._style().plan(request)
        tokens = self.tokenize_prompt(plan.prompt)
        if not tokens:
            raise BackendInvalidRequest("the rendered prompt is empty")
        if len(tokens) > self.n_ctx:
            raise BackendInvalidRequest(
                f"prompt is {len(tokens)} tokens but the context holds {self.n_ctx}"
            )
        if plan.grammar:
            # Parse once here so a broken grammar is an invalid_request, not a dead stream;
            # the worker builds its own sampler from the same text.
            try:
                L.llama_sampler_free(parse_grammar(self._vocab, plan.grammar, checked=bool(request.grammar)))
            except GrammarError as exc:
                raise BackendInvalidRequest(str(exc)) from None
        return tokens, plan

    async def count_tokens(self, request: GenerationRequest) -> int:
        if not self._ready:
            raise NotReady()
        tokens, _ = await asyncio.to_thread(self._prepare, request)
        return len(tokens)

    async def generate(self, request: GenerationRequest) -> EventStream:
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()
        await self.start(request, queue.put_nowait, cancel)
        return WorkerStream(queue, cancel)

    async def start(self, request: GenerationRequest, put: Callable[[object], None], cancel: threading.Event,
                    poster: Any = None) -> None:
        """Start one generation without a stream: `put` gets its events on this loop (a
        decode step's in one wake-up), then Done or a `bridge.Failure`; setting `cancel`
        stops it within a step. A runner passes a `poster` that delivers them on the
        scheduler's thread instead (ADR 0025)."""
        if not self._ready:
            raise NotReady()
        tokens, plan = await asyncio.to_thread(self._prepare, request)
        if not self._ready or self._gen is None:
            raise NotReady()
        job = GenerationJob(
            tokens=tokens,
            params=SamplingParams(
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                seed=self._seed(request.seed),
            ),
            grammar=plan.grammar,
            max_tokens=request.max_tokens,
            stop=list(request.stop),
            emit=loop_emitter(poster or asyncio.get_running_loop(), put, cancel),
            cancel=cancel,
            new_parser=plan.new_parser,
            request_id=request.id,
            progress=request.progress,
        )
        self._gen.submit(job)

    async def embed(self, request: EmbedResolved) -> EmbedResult:
        if not self._ready:
            raise NotReady()
        if self._embed_ctx is None:
            raise Unsupported("embed not supported by this backend")
        future: concurrent.futures.Future[EmbedResult] = concurrent.futures.Future()
        job = EmbedJob(request, future, self._embed_ctx)
        self._gen.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The client left, or a drain or reload gave up on it: stop between batches.
            job.cancel.set()
            raise

    async def stop(self, timeout: float) -> None:
        await asyncio.to_thread(self.close, timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the workers and free the model. False if a worker outlived `timeout`
        (its context and the model are then left alone: freeing them under a running
        decode would crash the process)."""
        with self._prep_cond:
            self._ready = False
        workers = [self._gen] if self._gen is not None else []
        for w in workers:
            w.shutdown()
        deadline = time.monotonic() + max(0.0, timeout)
        clean = True
        for w in workers:
            clean = w.join(max(0.0, deadline - time.monotonic())) and clean
        with self._prep_cond:
            clean = self._prep_cond.wait_for(
                lambda: self._preparing == 0, max(0.0, deadline - time.monotonic())
            ) and clean
        if not clean:
            log.warning("llama.cpp still busy after %.1fs; model left loaded", timeout)
            return False
        if self._model:
            L.llama_model_free(self._model)
            self._model = None
        return True
