"""Pure-Python pieces of the llama.cpp backend: stop strings, UTF-8 buffering, limits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.engine.llamacpp.sampling import (
    MAX_GRAMMAR_ALTERNATIONS,
    MAX_GRAMMAR_BYTES,
    GrammarError,
    StopScanner,
    Utf8Stream,
    check_grammar_limits,
)
from inferd.engine.llamacpp.settings import LlamaCppSettings


def feed(scanner: StopScanner, chunks: list[str]) -> tuple[str, bool]:
    out = []
    for chunk in chunks:
        text, hit = scanner.push(chunk)
        out.append(text)
        if hit:
            return "".join(out), True
    out.append(scanner.flush())
    return "".join(out), False


def test_stop_string_split_across_chunks():
    assert feed(StopScanner(["END"]), ["abc E", "N", "D tail"]) == ("abc ", True)


def test_partial_stop_prefix_is_held_then_released():
    s = StopScanner(["END"])
    assert s.push("abc EN") == ("abc ", False)
    assert s.push("X") == ("ENX", False)


def test_false_start_inside_longer_text():
    assert feed(StopScanner(["aab"]), ["a", "a", "a", "b", "c"]) == ("a", True)


def test_earliest_of_several_stops_wins():
    assert feed(StopScanner(["zz", "b"]), ["a", "zzb"]) == ("a", True)
    assert feed(StopScanner(["zz", "b"]), ["abzz"]) == ("a", True)


def test_held_tail_is_flushed_when_no_stop_comes():
    assert feed(StopScanner(["</s>"]), ["hello </", "s"]) == ("hello </s", False)


def test_no_stops_passes_through():
    s = StopScanner([])
    assert s.push("anything") == ("anything", False)
    assert s.flush() == ""


def test_utf8_stream_waits_for_the_whole_character():
    data = "a𓀀é".encode()
    u = Utf8Stream()
    pieces = [u.push(data[i:i + 1]) for i in range(len(data))]
    assert "".join(pieces) == "a𓀀é"
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[1:5] == ["", "", "", "𓀀"]


def test_utf8_stream_drops_an_unfinished_tail():
    u = Utf8Stream()
    assert u.push("ok".encode() + "𓀀".encode()[:2]) == "ok"
    u.finish()
    assert u.push(b"!") == "!"


def test_grammar_limits():
    check_grammar_limits("x" * MAX_GRAMMAR_BYTES)
    check_grammar_limits("|" * MAX_GRAMMAR_ALTERNATIONS)
    with pytest.raises(GrammarError, match="65537 bytes"):
        check_grammar_limits("x" * (MAX_GRAMMAR_BYTES + 1))
    with pytest.raises(GrammarError, match="bytes"):
        # The byte limit counts UTF-8 bytes, not characters.
        check_grammar_limits("é" * (MAX_GRAMMAR_BYTES // 2 + 1))
    with pytest.raises(GrammarError, match="4097 '\\|' alternations"):
        check_grammar_limits("|" * (MAX_GRAMMAR_ALTERNATIONS + 1))


def test_settings_defaults_follow_upstream():
    s = LlamaCppSettings(model_path="m.gguf")
    assert (s.n_ctx, s.n_gpu_layers, s.seed, s.embed, s.embed_n_ctx, s.n_batch) == (
        8192, 0, 0xDEADBEEF, False, 2048, 512)
    assert s.threads() >= 1 and s.threads_batch() == s.threads()
    assert LlamaCppSettings(model_path="m", n_threads=3).threads_batch() == 3


def _naive_stop_scan(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    """The scan StopScanner replaced, as the reference: earliest stop wins, the held tail
    is the longest suffix that is a proper prefix of some stop."""
    stops = [s for s in stops if s]
    pending, out = "", []
    for chunk in chunks:
        pending += chunk
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        if hits:
            out.append(pending[:min(hits)])
            return "".join(out), True
        hold = max((k for s in stops for k in range(1, min(len(s) - 1, len(pending)) + 1)
                    if pending.endswith(s[:k])), default=0)
        out.append(pending[:len(pending) - hold])
        pending = pending[len(pending) - hold:]
    return "".join(out) + pending, False


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stops=st.lists(st.text(alphabet="abc", max_size=6), max_size=6),
       chunks=st.lists(st.text(alphabet="abcd", max_size=5), max_size=12))
def test_stop_scanner_cuts_exactly_where_the_naive_scan_did(stops, chunks):
    """Item 5: the Aho-Corasick StopScanner (O(1) amortised per character, whatever the
    number of stops; 1,000 stops cost the old scan 3.7 ms a token) gives the same text
    and the same verdict as the scan it replaced, for any stops and any chunking."""
    assert feed(StopScanner(stops), chunks) == _naive_stop_scan(stops, chunks)
