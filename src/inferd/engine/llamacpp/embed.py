"""Embeddings: a second llama context (embeddings=true, pooled), used on the generation
thread between decode steps, one pass per step (`EmbedJob.advance`).

Not on a thread of its own: llama.cpp's CPU backend runs each calling thread's work
in an OpenMP team of its own, and with two teams in a process (more OpenMP threads
than cores) every team waits by sleeping instead of spinning; measured on 2 cores,
Gemma 3 270M, one embedding request cut chat decoding from 47 to 30 tokens/s for the
rest of the process's life (ADR 0025). One thread per process computes.

Follows upstream `run_embed` (upstream-engine §3.5): task prefix, MRL truncation to
`dimensions`, then L2 normalisation of the truncated vector. Unlike upstream's one
pass per input, inputs are packed into batches (ADR 0018): as many as fit in one
micro-batch (n_ubatch tokens, EMBED_MAX_SEQ inputs) go through one decode, each as
its own sequence, pooled separately; the cache is cleared between batches.

A job can be cancelled (the client left, a drain or reload gave up on it, shutdown):
its Event is checked before each batch.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
from dataclasses import dataclass, field

import llama_cpp.llama_cpp as L

from ...proto.embed import EmbedResolved, EmbedTask
from ..backend import BackendInvalidRequest, EmbedResult, Unavailable
from .job import SideJob
from .native import create_context, tokenize
from .settings import LlamaCppSettings

TASK_PREFIX: dict[EmbedTask | None, str] = {
    None: "",
    EmbedTask.RETRIEVAL_QUERY: "task: search result | query: ",
    EmbedTask.RETRIEVAL_DOCUMENT: "title: none | text: ",
    EmbedTask.SIMILARITY: "task: sentence similarity | query: ",
    EmbedTask.CLASSIFICATION: "task: classification | query: ",
    EmbedTask.CLUSTERING: "task: clustering | query: ",
    EmbedTask.QUESTION_ANSWERING: "task: question answering | query: ",
    EmbedTask.FACT_VERIFICATION: "task: fact checking | query: ",
    EmbedTask.CODE_RETRIEVAL_QUERY: "task: code retrieval | query: ",
}


#: Inputs decoded together at most (sequences of the embedding context).
EMBED_MAX_SEQ = 32


def task_prefix(task: EmbedTask | None) -> str:
    return TASK_PREFIX.get(task, "")


def l2_normalise(vec: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vec))
    if norm == 0.0:
        return vec
    return [x / norm for x in vec]


class EmbedContext:
    """Embedding context; touched by its owner thread only."""

    def __init__(self, model: L.llama_model_p, settings: LlamaCppSettings, label: str) -> None:
        n = settings.embed_n_ctx
        params = L.llama_context_default_params()
        params.n_ctx = n
        params.n_batch = n
        params.n_ubatch = n
        params.n_seq_max = EMBED_MAX_SEQ
        # One buffer for the whole batch: inputs of any lengths share one micro-batch.
        params.kv_unified = True
        params.embeddings = True
        params.pooling_type = (
            settings.embed_pooling if settings.embed_pooling is not None else L.LLAMA_POOLING_TYPE_MEAN
        )
        params.n_threads = settings.threads()
        params.n_threads_batch = settings.threads_batch()
        params.no_perf = True
        ctx, _ = create_context(model, params, settings.flash_attn)
        if not ctx:
            raise ValueError(f"llama.cpp could not create the embedding context (n_ctx={n})")
        self.ctx = ctx
        self.label = label
        self.vocab = L.llama_model_get_vocab(model)
        self.n_embd = L.llama_model_n_embd_out(model) or L.llama_model_n_embd(model)
        # The physical batch is the real ceiling: libllama asserts past it (upstream issue #20).
        self.n_ubatch = L.llama_n_ubatch(ctx)
        self.mem = L.llama_get_memory(ctx)
        # Encoder-only models need llama_encode; everything else (incl. non-causal
        # decoders such as EmbeddingGemma) goes through llama_decode.
        self.use_encode = bool(L.llama_model_has_encoder(model)) and not L.llama_model_has_decoder(model)
        self.n_seq = L.llama_n_seq_max(ctx)
        self.batch = L.llama_batch_init(self.n_ubatch, 0, 1)
        for i in range(self.n_ubatch):
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
            self.batch.logits[i] = 1
        #: Decodes run (one per batch of inputs); tests read it.
        self.passes = 0

    def close(self) -> None:
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None

    def tokenize(self, text: str) -> list[int]:
        return tokenize(self.vocab, text, add_special=True, parse_special=False)

    def embed(self, request: EmbedResolved, cancel: threading.Event | None = None) -> EmbedResult:
        """The whole request at once (what a caller owning this context may do)."""
        work = self.plan(request)
        while not work.finished:
            if cancel is not None and cancel.is_set():
                raise Unavailable("embedding cancelled")
            work.step()
        return work.result()

    def plan(self, request: EmbedResolved) -> "EmbedWork":
        """Check every input before any compute, then the passes to run (EmbedWork.step)."""
        dims = self.n_embd if request.dimensions is None else request.dimensions
        if dims > self.n_embd:
            raise BackendInvalidRequest(f"dimensions {dims} exceeds model n_embd {self.n_embd}")
        if dims < 1:
            raise BackendInvalidRequest("dimensions must be at least 1")
        prefix = task_prefix(request.task)
        # Check every input before spending compute on any of them.
        batches: list[list[int]] = []
        for i, text in enumerate(request.input):
            tokens = self.tokenize(prefix + text)
            if not tokens:
                raise BackendInvalidRequest(f"input[{i}] produced no tokens")
            if len(tokens) > self.n_ubatch:
                raise BackendInvalidRequest(
                    f"input exceeds embed context: {len(tokens)} tokens > n_ubatch {self.n_ubatch}"
                )
            batches.append(tokens)
        return EmbedWork(self, self._packed(batches), dims, sum(len(t) for t in batches))

    def _packed(self, inputs: list[list[int]]) -> list[list[list[int]]]:
        """Consecutive inputs grouped so each group fits one micro-batch."""
        groups: list[list[list[int]]] = []
        size = 0
        for tokens in inputs:
            if not groups or size + len(tokens) > self.n_ubatch or len(groups[-1]) >= self.n_seq:
                groups.append([])
                size = 0
            groups[-1].append(tokens)
            size += len(tokens)
        return groups

    def run_pass(self, group: list[list[int]]) -> list[list[float]]:
        """One decode over `group` (each input its own sequence); their pooled vectors."""
        if self.mem:
            L.llama_memory_clear(self.mem, True)
        b = self.batch
        tok, pos, seq = b.token, b.pos, b.seq_id
        i = 0
        for s, tokens in enumerate(group):
            for p, t in enumerate(tokens):
                tok[i] = t
                pos[i] = p
                seq[i][0] = s
                i += 1
        b.n_tokens = i
        rc = L.llama_encode(self.ctx, b) if self.use_encode else L.llama_decode(self.ctx, b)
        if rc != 0:
            raise Unavailable(f"embedding pass failed ({rc})")
        self.passes += 1
        vectors = []
        for s in range(len(group)):
            out = L.llama_get_embeddings_seq(self.ctx, s)
            if not out:
                raise Unavailable("the embedding context produced no pooled vector (pooling none?)")
            vectors.append(out[: self.n_embd])
        return vectors


@dataclass(eq=False)
class EmbedWork:
    """One request's passes, run one at a time."""

    context: EmbedContext
    groups: list[list[list[int]]]
    dims: int
    input_tokens: int
    vectors: list[list[float]] = field(default_factory=list)
    done: int = 0

    @property
    def finished(self) -> bool:
        return self.done == len(self.groups)

    def step(self) -> None:
        group = self.groups[self.done]
        self.vectors.extend(l2_normalise(v[: self.dims]) for v in self.context.run_pass(group))
        self.done += 1

    def result(self) -> EmbedResult:
        return EmbedResult(embeddings=self.vectors, dimensions=self.dims, model=self.context.label,
                           input_tokens=self.input_tokens)


@dataclass(eq=False)
class EmbedJob(SideJob):
    """An embedding request on the generation scheduler's thread: a side job, advanced
    one pass per scheduler step between decode steps (scheduler.SideJob)."""

    request: EmbedResolved
    future: concurrent.futures.Future[EmbedResult]
    context: EmbedContext
    #: Set when nobody waits for the result any more; checked before each pass.
    cancel: threading.Event = field(default_factory=threading.Event)
    _work: EmbedWork | None = None

    def advance(self) -> bool:
        """Run the next pass (the first call plans the request); True when finished."""
        try:
            if self._work is None:
                # False when the awaiting coroutine was cancelled while we queued.
                if not self.future.set_running_or_notify_cancel():
                    return True
                self._work = self.context.plan(self.request)
            if self.cancel.is_set():
                raise Unavailable("embedding cancelled")
            if not self._work.finished:
                self._work.step()
            if not self._work.finished:
                return False
            self.future.set_result(self._work.result())
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
            if not self.future.done():
                self.future.set_exception(exc)
        return True

    def abandon(self, exc: BaseException) -> None:
        if not isinstance(exc, (BackendInvalidRequest, Unavailable)):
            exc = Unavailable(str(exc) or type(exc).__name__)
        fut = self.future
        if fut.done():
            return
        if fut.running() or fut.set_running_or_notify_cancel():
            fut.set_exception(exc)

    def interrupt(self) -> None:
        """Stop before the next batch (the batch being decoded finishes)."""
        self.cancel.set()
