"""The generation context, its decode loop, and the async stream the loop reads from.

`GenerationContext` is owned by one ContextThread. It remembers which tokens sit in
its KV cache so a request sharing a prefix with the previous one (the next turn of a
chat) only evaluates the new tail. Events travel to the event loop through
`loop.call_soon_threadsafe`; cancellation travels back through a threading.Event that
is checked between tokens (and between prompt batches).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as L

from ..backend import BackendError, Unavailable
from ..events import ContextUsage, Done, Event, FinishReason, TextDelta, ThinkingDelta, Timings, ToolCall, Usage
from .native import PieceReader
from .sampling import Sampler, SamplingParams, StopScanner, Utf8Stream, parse_grammar
from .settings import LlamaCppSettings

log = logging.getLogger("inferd.engine.llamacpp")


class _Cancelled(Exception):
    pass


@dataclass(slots=True)
class _Failure:
    exc: BaseException


class GenerationContext:
    """A llama context plus what we know about its KV cache. Worker-thread only."""

    def __init__(self, model: L.llama_model_p, settings: LlamaCppSettings) -> None:
        params = L.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = min(settings.n_batch, settings.n_ctx)
        params.n_ubatch = min(settings.n_ubatch or params.n_batch, params.n_batch)
        params.n_seq_max = 1
        params.n_threads = settings.threads()
        params.n_threads_batch = settings.threads_batch()
        params.no_perf = True
        if settings.flash_attn is not None:
            params.flash_attn_type = (
                L.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        ctx = L.llama_init_from_model(model, params)
        if not ctx:
            raise ValueError(f"llama.cpp could not create a context with n_ctx={settings.n_ctx}")
        self.ctx = ctx
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = L.llama_n_ctx(ctx)
        self.n_batch = L.llama_n_batch(ctx)
        self.n_swa = L.llama_model_n_swa(model)
        self.mem = L.llama_get_memory(ctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        for i in range(self.n_batch):
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
        self.piece = PieceReader(self.vocab)
        #: Tokens whose K/V are in the cache, in position order.
        self.kv: list[int] = []
        #: Prompt tokens the last request actually evaluated (the rest came from the cache).
        self.last_prompt_evaluated = 0
        #: Tokens llama_decode has evaluated on this context (prompt and sampled); tests read it.
        self.decoded = 0

    def close(self) -> None:
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None

    # ---- KV bookkeeping ------------------------------------------------------------

    def _forget(self) -> None:
        L.llama_memory_clear(self.mem, True)
        self.kv.clear()

    def _reusable_prefix(self, tokens: list[int]) -> int:
        kv = self.kv
        limit = min(len(kv), len(tokens) - 1)  # keep one token to evaluate: logits must exist
        n = 0
        while n < limit and kv[n] == tokens[n]:
            n += 1
        if n and self.n_swa > 0:
            # A sliding-window cache may have dropped positions the next token attends to.
            if L.llama_memory_seq_pos_min(self.mem, 0) > max(0, n - self.n_swa):
                n = 0
        return n

    def _decode(self, tokens: list[int], pos0: int, want_logits: bool) -> None:
        b = self.batch
        tok, pos, out = b.token, b.pos, b.logits
        n = len(tokens)
        for i, t in enumerate(tokens):
            tok[i] = t
            pos[i] = pos0 + i
            out[i] = 0
        if want_logits:
            out[n - 1] = 1
        b.n_tokens = n
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        self.decoded += n

    def prefill(self, tokens: list[int], cancel: threading.Event) -> None:
        keep = self._reusable_prefix(tokens)
        if keep < len(self.kv):
            if keep == 0 or not L.llama_memory_seq_rm(self.mem, 0, keep, -1):
                L.llama_memory_clear(self.mem, True)
                keep = 0
            del self.kv[keep:]
        self.last_prompt_evaluated = len(tokens) - keep
        pos = keep
        end = len(tokens)
        while pos < end:
            if cancel.is_set():
                raise _Cancelled
            chunk = tokens[pos : pos + self.n_batch]
            self._decode(chunk, pos, want_logits=pos + len(chunk) == end)
            self.kv.extend(chunk)
            pos += len(chunk)

    # ---- one request -----------------------------------------------------------------

    def generate(self, job: GenerationJob) -> None:
        started = time.perf_counter()
        # Checked (F-11) in the backend before the job was queued.
        grammar = parse_grammar(self.vocab, job.grammar, checked=False) if job.grammar else None
        sampler = Sampler(job.params, grammar, self.n_vocab)
        try:
            self.prefill(job.tokens, job.cancel)
            prompt_done = time.perf_counter()
            reason, completion, thinking = self._sample_loop(job, sampler)
        except _Cancelled:
            job.abandon(Unavailable("generation cancelled"))
            return
        except BackendError as exc:
            # The output could not be read (an unparseable tool call): the partial
            # output stays sent, the request ends with this error. The cache is sound.
            job.abandon(exc)
            return
        except BaseException:
            # The cache may hold a half-written batch; never trust it again.
            self._forget()
            raise
        finally:
            sampler.close()
        ended = time.perf_counter()
        gen_s = ended - prompt_done
        job.emit(Done(
            reason,
            usage=Usage(prompt_tokens=len(job.tokens), completion_tokens=completion,
                        cached_tokens=len(job.tokens) - self.last_prompt_evaluated, thinking_tokens=thinking),
            # The turn's tokens: the last sampled one is evaluated when the next turn starts.
            context=ContextUsage(used=min(len(job.tokens) + completion, self.n_ctx), max=self.n_ctx),
            timings=Timings(
                prompt_ms=(prompt_done - started) * 1000.0,
                generate_ms=gen_s * 1000.0,
                tokens_per_second=completion / gen_s if gen_s > 0 else 0.0,
            ),
        ))

    def _sample_loop(self, job: GenerationJob, sampler: Sampler) -> tuple[FinishReason, int, int]:
        """Decode until EOG, a stop string, max_tokens or a full context.

        Returns (reason, completion tokens, of which thinking tokens). Each token's text
        goes through the request's output parser, which splits reasoning off and turns
        tool-call text into whole calls.
        """
        if job.max_tokens <= 0:
            return FinishReason.LENGTH, 0, 0
        ctx, vocab, kv = self.ctx, self.vocab, self.kv
        emit, cancel, piece = job.emit, job.cancel, self.piece
        is_eog, decode = L.llama_vocab_is_eog, L.llama_decode
        b = self.batch
        b_tok, b_pos, b_out = b.token, b.pos, b.logits
        utf8 = Utf8Stream()
        stops = StopScanner(job.stop)
        parser = job.new_parser()
        parse = parser.push
        n_ctx, max_tokens = self.n_ctx, job.max_tokens
        pos = len(kv)
        completion = thinking = 0
        while True:
            if cancel.is_set():
                raise _Cancelled
            token = sampler.sample(ctx)
            if is_eog(vocab, token):
                reason = FinishReason.END
                break
            completion += 1
            text, hit = stops.push(utf8.push(piece(token)))
            if text:
                for event in parse(text):
                    emit(event)
                if parser.last_was_thinking:
                    thinking += 1
            if hit:
                reason = FinishReason.END
                break
            if completion >= max_tokens or pos >= n_ctx:
                reason = FinishReason.LENGTH
                break
            b_tok[0] = token
            b_pos[0] = pos
            b_out[0] = 1
            b.n_tokens = 1
            rc = decode(ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}) at position {pos}")
            kv.append(token)
            self.decoded += 1
            pos += 1
        utf8.finish()
        tail = stops.flush()  # empty after a stop string: the scanner dropped it
        events = parse(tail) if tail else []
        events += parser.finish()
        for event in events:
            emit(event)
        if parser.saw_tool_call:
            reason = FinishReason.TOOL_USE
        return reason, completion, thinking


class _PlainText:
    """The output parser of a request that needs none: text stays text."""

    saw_tool_call = False
    last_was_thinking = False

    def push(self, text: str) -> list[TextDelta]:
        return [TextDelta(text)]

    def finish(self) -> list[TextDelta]:
        return []


@dataclass(eq=False)
class GenerationJob:
    tokens: list[int]
    params: SamplingParams
    grammar: str
    max_tokens: int
    stop: list[str]
    emit: Callable[[object], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    #: A fresh output parser (reasoning split, tool calls); the default passes text through.
    new_parser: Callable[[], Any] = field(default=lambda: _PlainText())

    def run(self, state: GenerationContext) -> None:
        if self.cancel.is_set():
            self.abandon(Unavailable("generation cancelled"))
            return
        state.generate(self)

    def abandon(self, exc: BaseException) -> None:
        if not isinstance(exc, BackendError):
            exc = Unavailable(str(exc) or type(exc).__name__)
        self.emit(_Failure(exc))

    def interrupt(self) -> None:
        self.cancel.set()


def loop_emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[object],
                 cancel: threading.Event) -> Callable[[object], None]:
    put = queue.put_nowait
    call = loop.call_soon_threadsafe

    def emit(item: object) -> None:
        try:
            call(put, item)
        except RuntimeError:
            # The loop is gone: nobody will read this stream again.
            cancel.set()

    return emit


class WorkerStream:
    """What the worker feeds and `generate()` returns: text events, then one Done (or an exception)."""

    __slots__ = ("_queue", "_cancel", "_finished", "__weakref__")

    def __init__(self, queue: asyncio.Queue[object], cancel: threading.Event) -> None:
        self._queue = queue
        self._cancel = cancel
        self._finished = False

    def __aiter__(self) -> WorkerStream:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        kind = type(item)
        if kind is TextDelta or kind is ThinkingDelta or kind is ToolCall:
            return item  # type: ignore[return-value]
        self._finished = True
        if kind is Done:
            return item  # type: ignore[return-value]
        self._cancel.set()
        assert isinstance(item, _Failure)
        raise item.exc

    async def aclose(self) -> None:
        self._finished = True
        self._cancel.set()

    def __del__(self) -> None:
        # A stream dropped without aclose() must still free the worker.
        self._cancel.set()
