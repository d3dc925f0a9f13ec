"""Token selection on llama.cpp: the request's chain (top_k -> top_p(min_keep 1) -> temp
-> dist(seed), or greedy) plus an optional GBNF grammar. No penalties, no min_p.

The text a sampled token becomes (UTF-8 reassembly, stop strings) is engine/text.py's,
which every backend shares and which needs no llama.cpp.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

import llama_cpp.llama_cpp as L

from ...proto.limits import MAX_GRAMMAR_BYTES
from .native import capture_native_log

# THREAT_MODEL F-11: bound the grammar before libllama parses it. The size limit is the
# wire's (proto/limits.py); the alternation count only libllama's parser cares about.
MAX_GRAMMAR_ALTERNATIONS = 4096

# llama.cpp reads this seed value as "pick a random one".
_LLAMA_RANDOM_SEED = 0xFFFFFFFF


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


class Sampler:
    """One request's sampling state. Lives on the worker thread; `close()` frees it.

    With a grammar the full-vocabulary grammar pass is expensive (tens of ms on a
    262k vocabulary), so we sample unconstrained first and only fall back to the
    constrained pass when the grammar rejects that token, as llama.cpp's own
    common sampler does. For greedy decoding the result is identical either way.
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
        self._one = (L.llama_token_data * 1)()
        self._one_arr = L.llama_token_data_array(self._one, 1, -1, False)
        #: The batch row whose logits `sample` reads (-1: the last one). Several
        #: sequences decoded in one batch each read their own row.
        self.row = -1

    def sample(self, ctx: L.llama_context_p) -> int:
        row = self.row
        if self._argmax:
            logits = L.llama_get_logits_ith(ctx, row)
            return int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        token = L.llama_sampler_sample(self._chain, ctx, row)
        grammar = self._grammar
        if grammar is None:
            return token
        logits = L.llama_get_logits_ith(ctx, row)
        one = self._one[0]
        one.id = token
        one.logit = 1.0
        one.p = 0.0
        self._one_arr.selected = -1
        L.llama_sampler_apply(grammar, ctypes.byref(self._one_arr))
        if one.logit == float("-inf"):
            token = self._constrained(logits)
        L.llama_sampler_accept(grammar, token)
        return token

    def _constrained(self, logits: ctypes.POINTER(ctypes.c_float)) -> int:
        n = self._n_vocab
        if self._full is None:
            self._full_c = (L.llama_token_data * n)()
            self._full = np.ctypeslib.as_array(self._full_c)
            self._ids = np.arange(n, dtype=np.int32)
        view = self._full
        # Earlier passes reorder and truncate the array in place: rebuild it whole.
        view["id"] = self._ids
        view["logit"] = np.ctypeslib.as_array(logits, shape=(n,))
        view["p"] = 0.0
        arr = L.llama_token_data_array(self._full_c, n, -1, False)
        L.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        L.llama_sampler_apply(self._chain, ctypes.byref(arr))
        if arr.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        # No accept into the chain here: llama_sampler_sample already did, and none
        # of our chain's samplers keeps per-token state.
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        if self._chain:
            L.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            L.llama_sampler_free(self._grammar)
            self._grammar = None
