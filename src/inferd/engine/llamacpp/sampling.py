"""Token selection on llama.cpp: the request's chain (top_k -> top_p(min_keep 1) -> temp
-> dist(seed), or greedy) plus an optional GBNF grammar. No penalties, no min_p.

The text a sampled token becomes (UTF-8 reassembly, stop strings) is engine/text.py's,
which every backend shares and which needs no llama.cpp.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

import llama_cpp.llama_cpp as L

from ...proto.errors import InvalidRequest
from ...proto.limits import MAX_GRAMMAR_BYTES, check_grammar_stacks
from .native import capture_native_log

# THREAT_MODEL F-11: bound the grammar before libllama parses it. The size limit is the
# wire's (proto/limits.py); the alternation count only libllama's parser cares about.
MAX_GRAMMAR_ALTERNATIONS = 4096

#: THREAT_MODEL F-11 (ADR 0032): CPU seconds one token's full-vocabulary grammar pass may
#: take before the request ends with `invalid_request` ("grammar too costly"). Legitimate
#: grammars (JSON schemas, tool calls) take a few tens of ms on a 262k vocabulary; the
#: pass runs on the scheduler's grammar thread, so this bounds wasted CPU, not the
#: other sequences' token gaps (those never wait for a pass).
GRAMMAR_TOKEN_CPU_S = 0.5
#: A pass over the budget ends the request when the pass before it was over too, or
#: when it alone took this many budgets. A costly grammar is costly on every token; one
#: slow pass of a cheap one is the machine (measured in CI on a shared host: a
#: `"yes" | "no"` pass that takes 30 ms took 915 ms of thread CPU once; not stolen
#: time, which this VM accounts apart; page reclaim is a candidate).
GRAMMAR_ONE_PASS_BUDGETS = 4

# llama.cpp reads this seed value as "pick a random one".
_LLAMA_RANDOM_SEED = 0xFFFFFFFF


def _row_address_through_the_binding(ctx: L.llama_context_p, row: int) -> int | None:
    return ctypes.cast(L.llama_get_logits_ith(ctx, row), ctypes.c_void_p).value


#: `llama_get_logits_ith` returning the row's address as an int. llama-cpp-python's
#: binding returns a POINTER(c_float), which then costs a numpy view built through
#: ctypes on every token (measured ~55 us per token on a 262k vocabulary right after a
#: decode, with the interpreter's caches cold; issue 18). The library handle is
#: llama-cpp-python's private `_lib`; without it, its binding serves (slower, same rows).
_logits_row_address = (
    ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)(("llama_get_logits_ith", L._lib))
    if hasattr(L, "_lib") else _row_address_through_the_binding)
#: Numpy views of logits rows a sampler keeps, by address (a handful in practice).
_MAX_ROW_VIEWS = 64


class GrammarError(ValueError):
    """The grammar is refused; the message is client-facing."""


def check_grammar_limits(grammar: str) -> None:
    size = len(grammar.encode("utf-8"))
    if size > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"grammar is {size} bytes, limit {MAX_GRAMMAR_BYTES}")
    alternations = grammar.count("|")
    if alternations > MAX_GRAMMAR_ALTERNATIONS:
        raise GrammarError(
            f"grammar has {alternations} '|' alternations, limit {MAX_GRAMMAR_ALTERNATIONS}"
        )
    try:
        check_grammar_stacks(grammar)  # what multiplies each token's cost (ADR 0032)
    except InvalidRequest as exc:
        raise GrammarError(str(exc)) from None


def parse_grammar(vocab: L.llama_vocab_p, grammar: str, *, checked: bool = True) -> L.llama_sampler_p:
    """Build the grammar sampler (root symbol `root`); the caller owns the result.

    `checked`: apply the F-11 limits (a client's grammar). Grammars we compile from a
    bounded JSON Schema or tool list are bounded by those limits instead.
    """
    if checked:
        check_grammar_limits(grammar)
    with capture_native_log() as lines:
        smpl = L.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not smpl:
        detail = " ".join(line.strip() for line in lines if line.strip()) or "parse failed"
        raise GrammarError(f"grammar: {detail}")
    return smpl


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _chain(params: SamplingParams) -> L.llama_sampler_p:
    cparams = L.llama_sampler_chain_default_params()
    cparams.no_perf = True
    chain = L.llama_sampler_chain_init(cparams)
    if params.greedy:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    seed = params.seed & 0xFFFFFFFF
    if seed == _LLAMA_RANDOM_SEED:
        # Keep "same seed => same text" true for the one value llama.cpp would randomise.
        seed -= 1
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(params.top_k))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(params.temperature))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
    return chain


class GrammarTooCostly(ValueError):
    """One token's grammar pass used more CPU than GRAMMAR_TOKEN_CPU_S; client-facing."""


class Sampler:
    """One request's sampling state. Lives on the worker thread; `close()` frees it.

    With a grammar the full-vocabulary grammar pass is expensive (tens of ms on a
    262k vocabulary, and a hostile grammar multiplies that by its number of stacks),
    so we sample unconstrained first (`quick`) and only when the grammar rejects that
    token run the constrained pass (`constrained`), as llama.cpp's own common sampler
    does. For greedy decoding the result is identical either way.

    THREAT_MODEL F-11 (ADR 0032): `quick` needs the context and runs in the decode
    step; `constrained` reads only this sampler's copy of the logits (`quick` takes
    it), so the scheduler runs it off the step, on its grammar thread, and it refuses
    to go on once two passes in a row used more than GRAMMAR_TOKEN_CPU_S of CPU each, or
    one used GRAMMAR_ONE_PASS_BUDGETS times that.
    """

    def __init__(self, params: SamplingParams, grammar: L.llama_sampler_p | None,
                 n_vocab: int) -> None:
        self._chain = _chain(params)
        self._grammar = grammar
        self._n_vocab = n_vocab
        # Plain greedy needs no candidate list: an argmax over the logits is ~10x
        # cheaper than llama_sampler_sample on a 262k vocabulary (~0.04 vs ~0.4 ms),
        # and picks the same (first) maximum as the greedy sampler.
        self._argmax = params.greedy and grammar is None
        self._full: np.ndarray | None = None
        self._logits: np.ndarray | None = None
        self._views: dict[int, np.ndarray] = {}
        #: The previous constrained pass went over GRAMMAR_TOKEN_CPU_S.
        self._over = False
        self._one = (L.llama_token_data * 1)()
        self._one_arr = L.llama_token_data_array(self._one, 1, -1, False)
        #: The batch row whose logits `quick` reads (-1: the last one). Several
        #: sequences decoded in one batch each read their own row.
        self.row = -1

    @property
    def constrained_by_grammar(self) -> bool:
        return self._grammar is not None

    def _row_view(self, ctx: L.llama_context_p, row: int) -> np.ndarray:
        """The logits of batch row `row` as a numpy view, without a copy. A view is
        kept by the row's address: whenever llama.cpp hands out that address again it
        points at a row of n_vocab floats, even in a buffer it has reallocated."""
        address = _logits_row_address(ctx, row)
        if not address:
            raise RuntimeError(f"llama.cpp has no logits for batch row {row}")
        view = self._views.get(address)
        if view is None:
            if len(self._views) >= _MAX_ROW_VIEWS:
                self._views.clear()
            view = self._views[address] = np.frombuffer(
                (ctypes.c_float * self._n_vocab).from_address(address), dtype=np.float32)
        return view

    def quick(self, ctx: L.llama_context_p) -> int | None:
        """The next token, or None when the grammar refused the unconstrained choice:
        then the row's logits are copied and `constrained()` must pick the token."""
        row = self.row
        if self._argmax:
            return int(self._row_view(ctx, row).argmax())
        token = L.llama_sampler_sample(self._chain, ctx, row)
        grammar = self._grammar
        if grammar is None:
            return token
        one = self._one[0]
        one.id = token
        one.logit = 1.0
        one.p = 0.0
        self._one_arr.selected = -1
        L.llama_sampler_apply(grammar, ctypes.byref(self._one_arr))
        if one.logit == float("-inf"):
            # The next decode overwrites the context's logits: keep this row's.
            if self._logits is None:
                self._logits = np.empty(self._n_vocab, dtype=np.float32)
            self._logits[:] = self._row_view(ctx, row)
            return None
        L.llama_sampler_accept(grammar, token)
        return token

    def constrained(self) -> int:
        """The grammar's pass over the whole vocabulary on the logits `quick` kept, then
        the chain; accepts the token into the grammar. Needs no context (any thread).
        Raises GrammarTooCostly when this pass and the one before each used more than
        GRAMMAR_TOKEN_CPU_S of this thread's CPU, or this one GRAMMAR_ONE_PASS_BUDGETS
        times that (thread CPU, so a busy machine does not make a grammar costly; yet
        one pass of a cheap grammar was once measured at 30x its cost: hence twice)."""
        started = time.thread_time()
        n = self._n_vocab
        if self._full is None:
            self._full_c = (L.llama_token_data * n)()
            self._full = np.ctypeslib.as_array(self._full_c)
            self._ids = np.arange(n, dtype=np.int32)
        view = self._full
        # Earlier passes reorder and truncate the array in place: rebuild it whole.
        view["id"] = self._ids
        view["logit"] = self._logits
        view["p"] = 0.0
        arr = L.llama_token_data_array(self._full_c, n, -1, False)
        L.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        used = time.thread_time() - started
        over = used > GRAMMAR_TOKEN_CPU_S
        if over and (self._over or used > GRAMMAR_ONE_PASS_BUDGETS * GRAMMAR_TOKEN_CPU_S):
            raise GrammarTooCostly(
                f"grammar too costly: one token's grammar pass took {used * 1000:.0f} ms of CPU, "
                f"at most {GRAMMAR_TOKEN_CPU_S * 1000:.0f} ms (GRAMMAR_TOKEN_CPU_S; twice in a row, "
                f"or {GRAMMAR_ONE_PASS_BUDGETS}x once); fewer optional or repeated items in a row make "
                "it cheaper")
        self._over = over
        L.llama_sampler_apply(self._chain, ctypes.byref(arr))
        if arr.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        # No accept into the chain here: llama_sampler_sample already did, and none
        # of our chain's samplers keeps per-token state.
        token = int(arr.data[arr.selected].id)
        L.llama_sampler_accept(self._grammar, token)
        return token

    def close(self) -> None:
        if self._chain:
            L.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            L.llama_sampler_free(self._grammar)
            self._grammar = None
