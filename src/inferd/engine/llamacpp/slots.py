"""The generation context and its KV bookkeeping: which tokens each slot's cache holds.

`GenerationContext` is one llama context with `n_seq` sequences (slots), each with
a KV stream of its own of n_ctx cells (ADR 0018). It is owned by the scheduler's
thread (`scheduler.py`), which decodes the running sequences together. For each slot
it remembers which tokens sit in its cache, so a request sharing a prefix with what a
slot holds (the next turn of a chat) only evaluates the new tail, and a long prefix
another slot holds (a shared system prompt) is copied (`llama_memory_seq_cp`)
instead of evaluated again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp.llama_cpp as L

from .native import PieceReader, StrictThreads, create_context
from .settings import LlamaCppSettings, available_cores, padded_ctx

#: A prefix another slot holds is copied rather than evaluated when it saves at least
#: this many tokens: llama.cpp copies between streams only whole (a few ms per
#: thousand cells on a CPU), while these tokens take about 70 ms to evaluate on the
#: 2-core reference machine.
COPY_MIN_TOKENS = 64


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    limit = min(limit, len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


@dataclass(eq=False, slots=True)
class Slot:
    """One sequence of the context: its id in llama.cpp and what its cache holds."""

    seq_id: int
    #: Tokens whose K/V this sequence has in the cache, in position order.
    kv: list[int] = field(default_factory=list)
    #: The request decoding in this slot, if any (scheduler-owned).
    busy: bool = False
    #: When the slot last started serving a request (a step count; for eviction order).
    used_at: int = 0


class GenerationContext:
    """A llama context with `n_seq` slots plus what we know about its cache. Worker-thread only."""

    def __init__(self, model: L.llama_model_p, settings: LlamaCppSettings, n_seq: int = 1) -> None:
        if n_seq < 1:
            raise ValueError("parallel must be at least 1")
        per_seq = padded_ctx(settings.n_ctx)
        params = L.llama_context_default_params()
        # Every sequence has n_ctx cells of its own, whatever the others hold (ADR 0018):
        # a decode never runs out of cells and nobody's context shrinks under load.
        params.n_ctx = per_seq * n_seq
        params.n_batch = max(min(settings.n_batch, settings.n_ctx), n_seq)
        params.n_ubatch = min(settings.n_ubatch or params.n_batch, params.n_batch)
        params.n_seq_max = n_seq
        # A stream per sequence, not one buffer for all: llama.cpp sums attention over
        # cells in buffer order, so in a shared buffer a request's floats would depend
        # on how earlier requests left the cells. In its own stream a sequence is laid
        # out exactly as in a context of its own (ADR 0018).
        params.kv_unified = False
        # With several sequences, sliding-window layers keep only their window (as
        # llama-server does): n_ctx for every sequence would otherwise cost the full
        # cache in every layer. One sequence keeps today's full-size cache (ADR 0018).
        params.swa_full = n_seq == 1 if settings.swa_full is None else settings.swa_full
        params.n_threads = settings.threads()
        params.n_threads_batch = settings.threads_batch()
        params.no_perf = True
        ctx, self.flash_attn = create_context(model, params, settings.flash_attn)
        if not ctx:
            raise ValueError(f"llama.cpp could not create a context with n_ctx={settings.n_ctx}"
                             + (f" x parallel {n_seq}" if n_seq > 1 else ""))
        self.ctx = ctx
        self._threads = (params.n_threads, params.n_threads_batch)
        cpus = settings.decode_cpus()
        self._strict = StrictThreads.attach(ctx, cpus, params.n_threads, params.n_threads_batch) if cpus else None
        #: The CPUs the decode threads are kept on, in thread order; [] = the kernel's choice.
        self.cpus = cpus if self._strict is not None else []
        self._shared = False
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_seq = n_seq
        #: The context one sequence may fill (prompt + output): reported as `context.max`.
        self.n_ctx = L.llama_n_ctx(ctx) // n_seq
        self.n_batch = L.llama_n_batch(ctx)
        self.n_swa = L.llama_model_n_swa(model)
        self.mem = L.llama_get_memory(ctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        b = self.batch
        for i in range(self.n_batch):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
        # Hot-path views of the batch arrays.
        self._tok, self._pos, self._out = b.token, b.pos, b.logits
        self._seq = [b.seq_id[i] for i in range(self.n_batch)]
        self.n_tokens = 0
        self.piece = PieceReader(self.vocab)
        self.slots = [Slot(i) for i in range(n_seq)]
        #: Prompt tokens the most recently started request evaluated (the rest came from the cache).
        self.last_prompt_evaluated = 0
        #: Tokens llama_decode has evaluated on this context (prompt and sampled); tests read it.
        self.decoded = 0
        #: Decode steps taken; a slot's `used_at` is one of these.
        self.steps = 0
        #: Prefixes copied from one slot to another; tests read it.
        self.copies = 0

    def close(self) -> None:
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None
            if self._strict is not None:
                self._strict.close()  # after the context that used them

    # ---- KV bookkeeping ------------------------------------------------------------

    def forget(self, slot: Slot) -> None:
        """Drop one sequence's cells."""
        L.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        slot.kv.clear()

    def trim(self, slot: Slot, keep: int) -> None:
        """Keep at most the first `keep` cached tokens of `slot`."""
        if keep < len(slot.kv):
            if keep <= 0 or not L.llama_memory_seq_rm(self.mem, slot.seq_id, keep, -1):
                self.forget(slot)
                return
            del slot.kv[keep:]

    def forget_all(self) -> None:
        L.llama_memory_clear(self.mem, True)
        for slot in self.slots:
            slot.kv.clear()

    def _usable(self, slot: Slot, n: int) -> int:
        """`n` shared tokens of `slot`'s cache, or 0 if the cache can no longer serve them."""
        if n and self.n_swa > 0:
            # A sliding-window cache may have dropped positions the next token attends to.
            if L.llama_memory_seq_pos_min(self.mem, slot.seq_id) > max(0, n - self.n_swa):
                return 0
        return n

    def reusable(self, slot: Slot, tokens: list[int]) -> int:
        """How much of `tokens` this slot's cache already holds (at least one token left to evaluate)."""
        return self._usable(slot, common_prefix(slot.kv, tokens, len(tokens) - 1))

    def best_donor(self, slot: Slot, tokens: list[int], have: int) -> tuple[Slot | None, int]:
        """The other slot whose cache holds the longest prefix of `tokens`, if longer than `have`."""
        best, best_n = None, have
        limit = len(tokens) - 1
        for other in self.slots:
            if other is slot or len(other.kv) <= best_n:
                continue
            n = self._usable(other, common_prefix(other.kv, tokens, limit))
            if n > best_n:
                best, best_n = other, n
        return best, best_n

    def place(self, slot: Slot, tokens: list[int]) -> int:
        """Make `slot`'s cache a prefix of `tokens`, as long as possible: keep what it
        shares, then copy further from another slot. Returns the tokens now cached."""
        self.trim(slot, self.reusable(slot, tokens))
        have = self.extend_from_donor(slot, tokens)
        return have

    def extend_from_donor(self, slot: Slot, tokens: list[int]) -> int:
        """Copy a longer shared prefix of `tokens` from another slot, if that saves enough."""
        have = len(slot.kv)
        if self.n_seq == 1:
            return have
        donor, n = self.best_donor(slot, tokens, have + COPY_MIN_TOKENS - 1)
        if donor is None:
            return have
        # Between streams llama.cpp copies a sequence whole (done before the next
        # decode); then everything past the shared prefix goes.
        L.llama_memory_seq_cp(self.mem, donor.seq_id, slot.seq_id, -1, -1)
        slot.kv[:] = donor.kv
        self.trim(slot, n)
        self.copies += 1
        return n

    # ---- one decode step -------------------------------------------------------------

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append one token to the step's batch; returns its row (where its logits land)."""
        i = self.n_tokens
        self._tok[i] = token
        self._pos[i] = pos
        self._seq[i][0] = seq_id
        self._out[i] = logits
        self.n_tokens = i + 1
        return i

    def share_cores(self, grammar_pass: bool) -> None:
        """Decode with one thread fewer while a grammar pass runs beside (F-11, ADR 0032),
        when the threads would otherwise outnumber the cores. ggml's threads wait for each
        other after every operation; with a busy third thread on two cores each wait can
        last a scheduler time slice (measured on 2 cores, K = 200: a 35 ms step took
        340 ms, and 65 ms at most with one thread fewer)."""
        if grammar_pass == self._shared:
            return
        n, n_batch = self._threads
        if grammar_pass and max(n, n_batch) < available_cores():
            return
        self._shared = grammar_pass
        if grammar_pass:
            L.llama_set_n_threads(self.ctx, max(1, n - 1), max(1, n_batch - 1))
        else:
            L.llama_set_n_threads(self.ctx, n, n_batch)

    def decode(self) -> None:
        n = self.n_tokens
        self.n_tokens = 0
        self.batch.n_tokens = n
        rc = L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        self.decoded += n
        self.steps += 1
