"""engine/text.py: stop strings and UTF-8 reassembly, shared by every backend."""

from __future__ import annotations

import importlib
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.engine.text import StopScanner, Utf8Stream


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
    scanner = StopScanner(stops)
    text, hit = feed(scanner, chunks)
    assert (text, hit) == _naive_stop_scan(stops, chunks)
    # The stop it names (Anthropic's stop_sequence) is one of them, and the one found where it cut.
    if hit:
        assert scanner.matched in stops and "".join(chunks).startswith(text + scanner.matched)
    else:
        assert scanner.matched is None


def test_the_stop_that_cut_is_named():
    s = StopScanner(["zz", "END"])
    assert s.push("abc E") == ("abc ", False) and s.matched is None
    assert s.push("ND zz") == ("", True) and s.matched == "END"


@pytest.mark.parametrize("module", ["inferd.engine.text", "inferd.engine.mock"])
def test_imports_without_llama_cpp(module, monkeypatch):
    """Why the text is not in llamacpp/sampling.py: the mock (and a daemon without
    llama-cpp-python) uses the same scanner."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # an import of it now fails
    for name in [m for m in sys.modules if m.startswith(("inferd.engine.text", "inferd.engine.mock"))]:
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module(module)
