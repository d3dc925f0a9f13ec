"""Continuous batching: the generation thread decodes every running sequence together.

`BatchScheduler` is the ContextThread of the generation context (ADR 0001: one thread
owns it). Instead of one job at a time, each iteration of its loop is one decode step
(ADR 0018):

1. Take what arrived (without blocking while anything runs), reap cancelled requests
   (their slot is free at once), admit waiting requests into free slots in arrival
   order - each to the slot whose cache it can use best.
2. Build one batch: the next token of every decoding sequence, then prompt chunks of
   the sequences still prefilling, oldest first. While anybody decodes, the prompt
   tokens a step carries are bounded (`prefill_chunk`, or sized from the measured
   prompt speed so a step takes about PREFILL_STEP_MS), so a long prompt never freezes
   the others' streams; with nobody decoding it takes the whole batch.
3. One `llama_decode`. Then each sequence with logits in the batch samples its token
   with its own sampler (seed, grammar), and its text goes through its own UTF-8
   stream, stop strings and output parser to its own stream. The step's events reach
   the event loop in one wake-up.

A grammar sequence whose grammar refuses the unconstrained token needs a pass over
the whole vocabulary for every stack of its grammar; a hostile grammar makes that
seconds per token (THREAT_MODEL F-11). That pass runs on the scheduler's one grammar
thread, off the step (ADR 0032): the sequence sits out of the batch until its token is
ready, the others keep decoding, and a cancelled one frees its slot at once.

A request whose prompt starts with what another running sequence is still evaluating
(a shared system prompt sent by several clients at once) waits for it and copies
those cells instead of evaluating them twice. A job that is not a generation (a
test's marker) is a barrier: it runs once everything submitted before it has ended.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ...proto.admin import SequenceSlot
from ..backend import BackendError, BackendInvalidRequest, Unavailable
from ..events import ContextUsage, Done, FinishReason, PromptProgress, Timings, Usage
from ..text import StopScanner, Utf8Stream
from .bridge import StepPost
from .job import GenerationJob, SideJob
from .sampling import GrammarTooCostly, Sampler, parse_grammar
from .settings import PREFILL_STEP_MS
from .slots import COPY_MIN_TOKENS, GenerationContext, Slot, common_prefix
from .threads import ContextThread, Job, WorkerStopped

log = logging.getLogger("inferd.engine.llamacpp")

#: The smallest prompt chunk a step carries while others decode: below it a chunk
#: costs much more per token (measured on a 2-core CPU with 3 others decoding, 2,048
#: prompt tokens: chunks of 32 / 64 / 128 / 256 ran at 0.54 / 0.66 / 0.80 / 0.85 of
#: the speed of 512-token chunks with nobody else decoding; ADR 0018).
MIN_CHUNK = 64
#: The chunk used until a step's costs have been measured.
FIRST_CHUNK = 128
#: Weight of the newest measurement in the running estimates of a step's costs.
EMA = 0.3
#: How long the loop waits for a grammar pass when nothing else can step, before it
#: looks for new requests and cancellations again.
GRAMMAR_POLL_S = 0.01

SequenceObserver = Callable[[list[SequenceSlot]], None]


class Sequence:
    """One request running in a slot: its sampler and everything its text goes through."""

    __slots__ = ("job", "slot", "prompt", "sampler", "utf8", "stops", "parser", "started", "prompt_done",
                 "cached", "placed", "next", "completion", "thinking", "wait_for", "wait_len", "pass_")

    def __init__(self, job: GenerationJob, slot: Slot, ctx: GenerationContext) -> None:
        self.job = job
        self.slot = slot
        self.prompt = job.tokens
        # Checked (F-11) in the backend before the job was queued.
        grammar = parse_grammar(ctx.vocab, job.grammar, checked=False) if job.grammar else None
        self.sampler = Sampler(job.params, grammar, ctx.n_vocab)
        self.utf8 = Utf8Stream()
        self.stops = StopScanner(job.stop)
        self.parser = job.new_parser()
        self.started = time.perf_counter()
        self.prompt_done = 0.0
        self.cached = 0
        self.placed = False
        #: The sampled token this sequence feeds into the next step (None while prefilling).
        self.next: int | None = None
        self.completion = 0
        self.thinking = 0
        #: A sequence still evaluating a prefix of this prompt, and how long that prefix is.
        self.wait_for: Sequence | None = None
        self.wait_len = 0
        #: The grammar pass choosing this sequence's next token, while one runs (F-11).
        self.pass_: Future[int] | None = None

    def close(self) -> None:
        running = self.pass_
        if running is not None and not running.done():
            # The grammar thread still uses the sampler: free it when its pass ends.
            running.add_done_callback(lambda _: self.sampler.close())
            return
        self.sampler.close()

    @property
    def prefilling(self) -> bool:
        # Before placement the slot may still hold a longer, older conversation.
        return not self.placed or len(self.slot.kv) < len(self.prompt)

    def report(self) -> SequenceSlot:
        return SequenceSlot(
            slot=self.slot.seq_id, request=self.job.request_id,
            state="prefill" if self.next is None and self.prefilling else "decode",
            prompt_tokens=len(self.prompt), cached_tokens=self.cached)


def _prompt_progress(seq: Sequence, done: int) -> None:
    """Issue 22: a request that asked for it hears how much of its prompt is read."""
    seq.job.emit(PromptProgress(done=done, total=len(seq.prompt), cached=seq.cached))


class BatchScheduler(ContextThread[GenerationContext]):
    def __init__(self, name: str, open_state: Callable[[], GenerationContext],
                 close_state: Callable[[GenerationContext], None], *, prefill_chunk: int | None = None,
                 step_ms: float = PREFILL_STEP_MS) -> None:
        super().__init__(name, open_state, close_state)
        self._fixed_chunk = prefill_chunk
        self._step_s = step_ms / 1000.0
        #: Measured costs of a step: seconds for the decode rows alone, seconds per prompt token.
        self._decode_s: float | None = None
        self._token_s: float | None = None
        self._waiting: deque[Job[GenerationContext] | GenerationJob] = deque()
        self._running: list[Sequence] = []
        #: Work that shares the thread but takes no slot (embeddings): one piece between
        #: decode steps, taking turns; it never waits for the running sequences.
        self._side: deque[SideJob] = deque()
        self._observer: SequenceObserver | None = None
        #: (prompt tokens, decode tokens) of recent steps that carried a prompt chunk; tests read it.
        self.prefill_steps: deque[tuple[int, int]] = deque(maxlen=4096)
        #: llama_decode calls done, plus grammar passes; a runner's watchdog reads it (ADR 0025).
        self.steps = 0
        #: The one thread grammar passes run on (F-11, ADR 0032); made on first use.
        self._grammar_pool: ThreadPoolExecutor | None = None

    # ---- outside the thread ----------------------------------------------------------

    def observe(self, observer: SequenceObserver | None) -> None:
        """Call `observer` (on this thread) with the running sequences whenever they change."""
        self._observer = observer

    def _interrupt_running(self) -> None:
        with self._lock:
            running = list(self._running)
            side = list(self._side)
        for seq in running:
            seq.job.interrupt()
        for job in side:
            job.interrupt()

    # ---- the loop ----------------------------------------------------------------------

    def _serve(self, ctx: GenerationContext) -> None:
        stopping = False
        try:
            while True:
                if not stopping:
                    block = not self._running and not self._waiting and not self._side
                    if block:
                        StepPost.idle()
                    stopping = self._intake(block=block)
                    if stopping:
                        # Whatever was admitted after shutdown() looked stops too.
                        self._interrupt_running()
                if stopping:
                    self._refuse_waiting()
                changed = self._reap()
                if not stopping:
                    changed = self._admit(ctx) or changed
                if self._side:
                    StepPost.idle()
                    self._advance_side()
                changed = self._collect_passes(ctx) or changed
                if not self._running:
                    if changed:
                        self._report()
                    if stopping:
                        return
                    continue
                if changed:
                    self._report()
                if all(seq.pass_ is not None for seq in self._running):
                    # Only grammar passes are running: wait for one, a little at a time,
                    # so new requests and cancellations are still seen.
                    StepPost.idle()
                    wait([seq.pass_ for seq in self._running if seq.pass_ is not None],
                         timeout=GRAMMAR_POLL_S, return_when=FIRST_COMPLETED)
                    continue
                self._step(ctx)
                self.steps += 1
        finally:
            StepPost.idle()
            for seq in self._take_all():
                seq.job.abandon(Unavailable("generation cancelled"))
                seq.close()
            self._refuse_waiting()
            if self._grammar_pool is not None:
                self._grammar_pool.shutdown(wait=False, cancel_futures=True)

    def _advance_side(self) -> None:
        job = self._side[0]
        try:
            finished = job.advance()
        except Exception as exc:  # noqa: BLE001 - one bad job must not end the thread
            log.exception("%s: side job failed", self.name)
            job.abandon(exc)
            finished = True
        with self._lock:
            if finished:
                self._side.popleft()
            else:
                self._side.rotate(-1)

    def _intake(self, block: bool) -> bool:
        """Move submitted jobs to the waiting line. True once shutdown was asked for."""
        jobs = self._jobs
        while True:
            if block:
                job = jobs.get()
                block = False
            else:
                if jobs.empty():
                    return False
                job = jobs.get_nowait()
            if job is None:
                return True
            if isinstance(job, SideJob):
                with self._lock:
                    self._side.append(job)
            else:
                self._waiting.append(job)

    def _refuse_waiting(self) -> None:
        while self._waiting:
            self._waiting.popleft().abandon(WorkerStopped("backend stopped"))
        with self._lock:
            side, self._side = self._side, deque()
        for job in side:
            job.abandon(WorkerStopped("backend stopped"))

    def _take_all(self) -> list[Sequence]:
        with self._lock:
            running, self._running = self._running, []
        return running

    def _reap(self) -> bool:
        """Drop cancelled requests: waiting ones are refused, running ones lose their cells."""
        changed = False
        if self._waiting and any(isinstance(j, GenerationJob) and j.cancel.is_set() for j in self._waiting):
            kept: deque[Job[GenerationContext] | GenerationJob] = deque()
            for job in self._waiting:
                if isinstance(job, GenerationJob) and job.cancel.is_set():
                    job.abandon(Unavailable("generation cancelled"))
                else:
                    kept.append(job)
            self._waiting = kept
        for seq in [s for s in self._running if s.job.cancel.is_set()]:
            assert self.state is not None
            self._drop(seq)
            # The slot is free at once and the cells of what it generated are released;
            # its prompt stays cached like a finished request's, so "stop, then
            # regenerate" evaluates one token (ADR 0018).
            self.state.trim(seq.slot, len(seq.prompt))
            seq.job.abandon(Unavailable("generation cancelled"))
            changed = True
        return changed

    def _drop(self, seq: Sequence) -> None:
        with self._lock:
            self._running.remove(seq)
        seq.slot.busy = False
        seq.close()

    def _admit(self, ctx: GenerationContext) -> bool:
        admitted = False
        while self._waiting:
            job = self._waiting[0]
            if not isinstance(job, GenerationJob):
                if self._running:
                    break  # a barrier: it runs once everything before it has finished
                self._waiting.popleft()
                StepPost.idle()
                self._run_one(job, ctx)
                continue
            slot = self._pick_slot(ctx, job.tokens)
            if slot is None:
                break
            self._waiting.popleft()
            try:
                seq = Sequence(job, slot, ctx)
            except Exception as exc:  # noqa: BLE001 - e.g. a grammar libllama refuses after all
                job.abandon(exc)
                continue
            slot.busy = True
            slot.used_at = ctx.steps
            self._wait_for_shared_prefix(ctx, seq)
            with self._lock:
                self._running.append(seq)
            admitted = True
        return admitted

    def _pick_slot(self, ctx: GenerationContext, tokens: list[int]) -> Slot | None:
        """The free slot that keeps the running sequences in the fewest runs of
        consecutive ids, then loses the fewest cached tokens, then reuses the most,
        then was used longest ago.

        llama.cpp puts sequences with their own KV streams into one micro-batch (one
        pass over the weights) only while their ids are consecutive (`split_equal`):
        four requests decoding in slots 0, 2, 5 and 7 cost four passes a step, in 0-3
        one (measured: 4 clients at 0.71x llama-server's aggregate before this rule).
        A prompt another slot has cached is not lost by taking a different slot: it
        is copied from there (`GenerationContext.place`). Among the rest, a chat's
        next turn returns to its slot and an unrelated request takes an empty slot
        rather than destroying another chat's cache."""
        busy = {s.seq_id for s in ctx.slots if s.busy}
        best: Slot | None = None
        best_key: tuple[int, int, int, int] | None = None
        for slot in ctx.slots:
            if slot.busy:
                continue
            reuse = ctx.reusable(slot, tokens)
            # Taking this slot makes one run more, the same, or one fewer (it joins
            # two runs): by how many of its neighbours are busy.
            joins = (slot.seq_id - 1 in busy) + (slot.seq_id + 1 in busy)
            key = (-joins, len(slot.kv) - reuse, -reuse, slot.used_at)
            if best_key is None or key < best_key:
                best, best_key = slot, key
        return best

    def _wait_for_shared_prefix(self, ctx: GenerationContext, seq: Sequence) -> None:
        """If a sequence still prefilling shares more of this prompt than any cache
        holds (by enough to be worth a copy), wait for it and copy its cells instead of
        evaluating them twice."""
        cached = ctx.reusable(seq.slot, seq.prompt)
        _, cached = ctx.best_donor(seq.slot, seq.prompt, cached)
        for other in self._running:
            if not other.prefilling:
                continue
            shared = common_prefix(other.prompt, seq.prompt, len(seq.prompt) - 1)
            if shared >= cached + COPY_MIN_TOKENS and shared > seq.wait_len:
                seq.wait_for, seq.wait_len = other, shared

    def _chunk(self, ctx: GenerationContext, decoding: int) -> int:
        """Prompt tokens one step may carry while `decoding` sequences stream."""
        room = ctx.n_batch - decoding
        if not decoding:
            return room
        if self._fixed_chunk is not None:
            return max(1, min(self._fixed_chunk, room))
        if self._token_s is None:
            chunk = FIRST_CHUNK
        else:
            # A step costs about decode_s + chunk * token_s: fill it up to the target.
            chunk = int((self._step_s - (self._decode_s or 0.0)) / self._token_s)
        return max(1, min(max(chunk, MIN_CHUNK), room))

    def _measure(self, prompt_tokens: int, decoding: int, seconds: float) -> None:
        """Update the estimates of what a step costs from one that just ran."""
        if not prompt_tokens:
            old = self._decode_s
            self._decode_s = seconds if old is None else (1 - EMA) * old + EMA * seconds
        elif prompt_tokens >= MIN_CHUNK // 2:
            fixed = (self._decode_s or 0.0) if decoding else 0.0
            per = max(seconds - fixed, 0.0) / prompt_tokens
            old = self._token_s
            self._token_s = per if old is None else (1 - EMA) * old + EMA * per

    def _step(self, ctx: GenerationContext) -> None:
        running = self._running
        decoding = [s for s in running if s.next is not None]
        # Prompt chunks: oldest request first, within the step's budget.
        budget = self._chunk(ctx, len(decoding))
        fed: list[tuple[Sequence, int, int]] = []
        for seq in running:
            if budget <= 0:
                break
            if seq.next is not None or not seq.prefilling:
                continue
            waited = seq.wait_for
            if waited is not None:
                if waited in running and len(waited.slot.kv) < seq.wait_len:
                    continue
                seq.wait_for = None
            if not seq.placed:
                StepPost.idle()  # placing may copy another slot's cells
                self._place(ctx, seq)
                if seq.job.progress:
                    _prompt_progress(seq, seq.cached)  # reading starts (issue 22)
            start = len(seq.slot.kv)
            end = min(len(seq.prompt), start + budget)
            fed.append((seq, start, end))
            budget -= end - start
        # Rows in slot order: llama.cpp puts consecutive sequences of a batch into one
        # micro-batch (one pass over the weights) when each has its own KV stream.
        add = ctx.add
        if len(decoding) > 1 or fed:
            order = sorted([(s.slot.seq_id, s, -1, -1) for s in decoding] + [(f[0].slot.seq_id, *f) for f in fed],
                           key=lambda e: e[0])
        else:
            order = [(s.slot.seq_id, s, -1, -1) for s in decoding]
        for sid, seq, start, end in order:
            if start < 0:
                seq.sampler.row = add(seq.next, len(seq.slot.kv), sid, True)  # type: ignore[arg-type]
                continue
            prompt = seq.prompt
            last = len(prompt) - 1
            for i in range(start, end):
                row = add(prompt[i], i, sid, i == last)
            if end == len(prompt):
                seq.sampler.row = row
        if ctx.n_tokens == 0:
            # Only sequences waiting for another's prompt, and that one gone: never
            # spin, let them evaluate their own prompts from the next step on.
            for seq in self._running:
                seq.wait_for = None
            return
        prompt_tokens = sum(e - s for _, s, e in fed)
        if prompt_tokens:
            StepPost.idle()  # a prompt chunk makes a long step: held events go first
        ctx.share_cores(any(s.pass_ is not None for s in running))
        t0 = time.perf_counter()
        StepPost.begin()
        try:
            try:
                ctx.decode()
            except Exception as exc:  # noqa: BLE001 - the cache may hold a half-written batch
                log.exception("%s: decode step failed", self.name)
                ctx.forget_all()
                for seq in self._take_all():
                    seq.slot.busy = False
                    seq.close()
                    seq.job.abandon(Unavailable(str(exc)))
                self._report()
                return
            now = time.perf_counter()
            self._measure(prompt_tokens, len(decoding), now - t0)
            if prompt_tokens:
                self.prefill_steps.append((prompt_tokens, len(decoding)))
            for seq, start, end in fed:
                seq.slot.kv.extend(seq.prompt[start:end])
                if seq.job.progress:
                    _prompt_progress(seq, end)
            changed = False
            for seq in decoding:
                seq.slot.kv.append(seq.next)  # type: ignore[arg-type]
                seq.next = None
                changed = self._advance(ctx, seq) or changed
            for seq, _, end in fed:
                if end == len(seq.prompt):
                    seq.prompt_done = now
                    changed = True
                    self._advance(ctx, seq)
            if changed:
                self._report()
        finally:
            StepPost.flush()
            if prompt_tokens:
                StepPost.idle()  # a first token is never held (time to first token)

    def _collect_passes(self, ctx: GenerationContext) -> bool:
        """Take the tokens of finished grammar passes (F-11); True if anything changed."""
        changed = False
        for seq in [s for s in self._running if s.pass_ is not None and s.pass_.done()]:
            done, seq.pass_ = seq.pass_, None
            self.steps += 1  # progress for the runner's watchdog, as a decode step is
            exc = done.exception()
            StepPost.begin()
            try:
                if exc is None:
                    changed = self._take(ctx, seq, done.result()) or changed
                else:
                    if isinstance(exc, GrammarTooCostly):
                        exc = BackendInvalidRequest(str(exc))
                    changed = self._failed(ctx, seq, exc)  # type: ignore[arg-type]
            finally:
                StepPost.flush()
        return changed

    def _grammar_pass(self, seq: Sequence) -> None:
        """Start the constrained pass of `seq` on the grammar thread (F-11, ADR 0032)."""
        pool = self._grammar_pool
        if pool is None:
            pool = self._grammar_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-grammar")
        seq.pass_ = pool.submit(seq.sampler.constrained)

    def _place(self, ctx: GenerationContext, seq: Sequence) -> None:
        own = ctx.reusable(seq.slot, seq.prompt)
        seq.cached = ctx.place(seq.slot, seq.prompt)
        seq.placed = True
        ctx.last_prompt_evaluated = len(seq.prompt) - seq.cached
        log.debug("%s: request %r in slot %d: %d of %d prompt tokens cached (%d copied from another slot)",
                  self.name, seq.job.request_id, seq.slot.seq_id, seq.cached, len(seq.prompt), seq.cached - own)

    def _advance(self, ctx: GenerationContext, seq: Sequence) -> bool:
        """Sample this sequence's next token and send its text; True if it finished."""
        job = seq.job
        try:
            if job.max_tokens <= 0:
                self._finish(ctx, seq, FinishReason.LENGTH)
                return True
            token = seq.sampler.quick(ctx.ctx)
            if token is None:
                self._grammar_pass(seq)
                return False
        except Exception as exc:  # noqa: BLE001 - one request's fault must not end the others
            return self._failed(ctx, seq, exc)
        return self._take(ctx, seq, token)

    def _take(self, ctx: GenerationContext, seq: Sequence, token: int) -> bool:
        """Send the text of `seq`'s sampled `token`; True if the sequence finished."""
        job = seq.job
        try:
            piece = ctx.piece.sampled(token)
            if piece is None:
                self._finish(ctx, seq, FinishReason.END)
                return True
            seq.completion += 1
            text, hit = seq.stops.push(seq.utf8.push(piece))
            if text:
                parser = seq.parser
                emit = job.emit
                for event in parser.push(text):
                    emit(event)
                if parser.last_was_thinking:
                    seq.thinking += 1
            if hit:
                self._finish(ctx, seq, FinishReason.END, seq.stops.matched)
                return True
            if seq.completion >= job.max_tokens or len(seq.slot.kv) >= ctx.n_ctx:
                self._finish(ctx, seq, FinishReason.LENGTH)
                return True
        except Exception as exc:  # noqa: BLE001 - one request's fault must not end the others
            return self._failed(ctx, seq, exc)
        seq.next = token
        return False

    def _failed(self, ctx: GenerationContext, seq: Sequence, exc: Exception) -> bool:
        """End `seq` with `exc`; the others go on. Always True (it finished)."""
        self._drop(seq)
        if not isinstance(exc, BackendError):
            log.error("%s: generation failed", self.name, exc_info=exc)
            # Trust no cache nobody is using: a fault we cannot name may have left it wrong.
            for slot in ctx.slots:
                if not slot.busy:
                    ctx.forget(slot)
        # A BackendError (an unparseable tool call): the partial output stays sent, the
        # request ends with this error. The cache is sound.
        seq.job.abandon(exc)
        return True

    def _finish(self, ctx: GenerationContext, seq: Sequence, reason: FinishReason,
                stop_sequence: str | None = None) -> None:
        job, parser = seq.job, seq.parser
        seq.utf8.finish()
        tail = seq.stops.flush()  # empty after a stop string: the scanner dropped it
        events = parser.push(tail) if tail else []
        events += parser.finish(cut=reason is FinishReason.LENGTH)
        for event in events:
            job.emit(event)
        if parser.saw_tool_call and reason is not FinishReason.LENGTH:
            reason, stop_sequence = FinishReason.TOOL_USE, None
        self._drop(seq)
        ended = time.perf_counter()
        gen_s = ended - seq.prompt_done
        prompt = len(seq.prompt)
        job.emit(Done(
            reason,
            stop_sequence=stop_sequence,
            usage=Usage(prompt_tokens=prompt, completion_tokens=seq.completion, cached_tokens=seq.cached,
                        thinking_tokens=seq.thinking),
            # The turn's tokens: the last sampled one is evaluated when the next turn starts.
            context=ContextUsage(used=min(prompt + seq.completion, ctx.n_ctx), max=ctx.n_ctx),
            timings=Timings(
                prompt_ms=(seq.prompt_done - seq.started) * 1000.0,
                generate_ms=gen_s * 1000.0,
                tokens_per_second=seq.completion / gen_s if gen_s > 0 else 0.0,
            ),
        ))

    def _report(self) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            observer([seq.report() for seq in self._running])
        except Exception:  # noqa: BLE001 - reporting must never stop decoding
            log.exception("%s: sequence observer failed", self.name)

    def running(self) -> list[SequenceSlot]:
        """The running sequences now (any thread; a snapshot)."""
        with self._lock:
            running = list(self._running)
        return [seq.report() for seq in running]

