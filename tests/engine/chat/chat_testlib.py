"""Helpers for the chat-package tests: template rendering, split feeding, and two ways to
check a GBNF grammar without a model:

- `grammar_parses(g)`: llama.cpp's own grammar parser (through llama-cpp-python's C API,
  `llama_sampler_init_grammar` with no vocabulary: parsing needs none). Returns False
  when llama.cpp rejects the grammar.
- `GbnfMatcher(g).accepts(text)`: a small reference recognizer for the GBNF subset our
  grammars use (literals, classes, groups, alternation, ?, *, +, {m,n}), so tests can
  check that a grammar admits the calls a template writes and refuses wrong ones. It
  is an exact recognizer (sets of end positions), not a sampler.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from inferd.engine.events import TextDelta, ThinkingDelta, ToolCall, ToolCallDelta

TEMPLATES = Path(__file__).parent / "templates"


# ---- templates -------------------------------------------------------------------------

@lru_cache(maxsize=None)
def template_source(filename: str) -> str:
    return (TEMPLATES / filename).read_text(encoding="utf-8")


def render_template(filename: str, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                    add_generation_prompt: bool = True, **extra: Any) -> str:
    """Render a template the way HF transformers does (sandboxed Jinja, trim/lstrip)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime(2025, 1, 2).strftime(fmt)
    return env.from_string(template_source(filename)).render(
        messages=messages, tools=tools, bos_token="<BOS>", eos_token="<EOS>",
        add_generation_prompt=add_generation_prompt, **extra)


# ---- feeding a parser ------------------------------------------------------------------

def counter_ids(prefix: str = "id"):
    n = iter(range(1_000_000))
    return lambda: f"{prefix}{next(n)}"


def normalize(events: list[Any]) -> list[Any]:
    """Merge adjacent text (and adjacent thinking) deltas; drop empty ones. Argument
    pieces are checked, then dropped: a call's pieces come before it, under its id and
    name, and add up to exactly the text its input is sent as."""
    out: list[Any] = []
    pieces: dict[str, list[str]] = {}
    for ev in events:
        if isinstance(ev, ToolCallDelta):
            assert ev.arguments, "an empty argument piece"
            pieces.setdefault(ev.id, []).append(ev.arguments)
            continue
        if isinstance(ev, ToolCall) and ev.id in pieces:
            assert "".join(pieces.pop(ev.id)) == json.dumps(ev.input, ensure_ascii=False), ev
        if isinstance(ev, (TextDelta, ThinkingDelta)):
            if not ev.text:
                continue
            if out and type(out[-1]) is type(ev):
                out[-1] = type(ev)(out[-1].text + ev.text)
                continue
            out.append(type(ev)(ev.text))
        else:
            out.append(ev)
    assert not pieces, f"argument pieces of calls that never came: {pieces}"
    return out


def run(make_parser, pieces: list[str]) -> list[Any]:
    p = make_parser()
    events: list[Any] = []
    for piece in pieces:
        events += p.push(piece)
    events += p.finish()
    return events


def split_variants(text: str, *, seed: int = 7, random_splits: int = 20) -> list[list[str]]:
    """Whole; every single split point; one char at a time; random multi-splits."""
    variants = [[text]]
    variants += [[text[:i], text[i:]] for i in range(1, len(text))]
    variants.append(list(text))
    rng = random.Random(seed)
    for _ in range(random_splits):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))) if len(text) > 1 else []
        bounds = [0, *cuts, len(text)]
        variants.append([text[a:b] for a, b in zip(bounds, bounds[1:])])
    return variants


def events_for_all_splits(make_parser, text: str) -> list[Any]:
    """Events for `text`, asserting every way of splitting it gives the same events."""
    expected = normalize(run(make_parser, [text]))
    for pieces in split_variants(text):
        got = normalize(run(make_parser, pieces))
        assert got == expected, f"split {pieces!r} gave {got!r}, whole gave {expected!r}"
    return expected


def visible_text(events: list[Any]) -> str:
    return "".join(ev.text for ev in events if isinstance(ev, (TextDelta, ThinkingDelta)))


def calls(events: list[Any]) -> list[tuple[str, Any]]:
    return [(ev.name, ev.input) for ev in events if isinstance(ev, ToolCall)]


# ---- grammars --------------------------------------------------------------------------

def grammar_parses(grammar: str) -> bool:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode("utf-8"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


class GbnfMatcher:
    """Exact recognizer for the GBNF our grammars use (see module docstring)."""

    def __init__(self, grammar: str) -> None:
        self.rules: dict[str, Any] = {}
        for line in grammar.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, body = line.partition("::=")
            assert sep, line
            self.rules[name.strip()] = _Parse(body.strip()).alternation(top=True)

    def accepts(self, text: str, root: str = "root") -> bool:
        self.text = text
        self.memo: dict[tuple[str, int], frozenset[int]] = {}
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 20000))
        try:
            return len(text) in self._ref(root, 0)
        finally:
            sys.setrecursionlimit(old)

    def _ref(self, name: str, pos: int) -> frozenset[int]:
        key = (name, pos)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = frozenset()  # left recursion guard (llama.cpp forbids it anyway)
        result = self._match(self.rules[name], pos)
        self.memo[key] = result
        return result

    def _match(self, node: Any, pos: int) -> frozenset[int]:
        kind = node[0]
        t = self.text
        if kind == "alt":
            out: set[int] = set()
            for seq in node[1]:
                out |= self._match(seq, pos)
            return frozenset(out)
        if kind == "seq":
            positions = {pos}
            for item in node[1]:
                nxt: set[int] = set()
                for p in positions:
                    nxt |= self._match(item, p)
                positions = nxt
                if not positions:
                    break
            return frozenset(positions)
        if kind == "lit":
            lit = node[1]
            return frozenset({pos + len(lit)}) if t.startswith(lit, pos) else frozenset()
        if kind == "cls":
            if pos >= len(t):
                return frozenset()
            c = ord(t[pos])
            inside = any(lo <= c <= hi for lo, hi in node[2])
            return frozenset({pos + 1}) if inside != node[1] else frozenset()
        if kind == "any":
            return frozenset({pos + 1}) if pos < len(t) else frozenset()
        if kind == "ref":
            return self._ref(node[1], pos)
        if kind == "rep":
            _, item, lo, hi = node
            result: set[int] = {pos} if lo == 0 else set()
            level: set[int] = {pos}
            seen: set[int] = set()  # positions already expanded once the minimum was met
            count = 0
            while level and (hi is None or count < hi):
                count += 1
                nxt: set[int] = set()
                for p in level:
                    nxt |= self._match(item, p)
                if count >= lo:
                    result |= nxt
                    if hi is None:  # unbounded: only new positions can add anything
                        nxt -= seen
                        seen |= nxt
                level = nxt
            return frozenset(result)
        raise AssertionError(kind)


class _Parse:
    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def char(self) -> int:
        s = self.s
        if s[self.i] == "\\":
            e = s[self.i + 1]
            if e in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[e]
                code = int(s[self.i + 2:self.i + 2 + width], 16)
                self.i += 2 + width
                return code
            self.i += 2
            return ord({"n": "\n", "r": "\r", "t": "\t"}.get(e, e))
        c = s[self.i]
        self.i += 1
        return ord(c)

    def alternation(self, top: bool = False) -> Any:
        seqs = [self.sequence()]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            seqs.append(self.sequence())
        if top:
            assert self.i == len(self.s), f"trailing text at {self.i}: {self.s!r}"
        return ("alt", seqs)

    def sequence(self) -> Any:
        items = []
        while True:
            self.ws()
            if self.i >= len(self.s) or self.s[self.i] in "|)":
                return ("seq", items)
            item = self.primary()
            self.ws()
            while self.i < len(self.s) and self.s[self.i] in "*+?{":
                op = self.s[self.i]
                if op == "{":
                    end = self.s.index("}", self.i)
                    parts = self.s[self.i + 1:end].split(",")
                    lo = int(parts[0])
                    hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1].strip() else None)
                    self.i = end + 1
                else:
                    lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[op]
                    self.i += 1
                item = ("rep", item, lo, hi)
                self.ws()
            items.append(item)

    def primary(self) -> Any:
        s = self.s
        c = s[self.i]
        if c == '"':
            self.i += 1
            chars = []
            while s[self.i] != '"':
                chars.append(chr(self.char()))
            self.i += 1
            return ("lit", "".join(chars))
        if c == "[":
            self.i += 1
            negated = s[self.i] == "^"
            if negated:
                self.i += 1
            ranges = []
            while s[self.i] != "]":
                lo = self.char()
                hi = lo
                if s[self.i] == "-" and s[self.i + 1] != "]":
                    self.i += 1
                    hi = self.char()
                ranges.append((lo, hi))
            self.i += 1
            return ("cls", negated, ranges)
        if c == "(":
            self.i += 1
            inner = self.alternation()
            assert s[self.i] == ")", s[self.i:]
            self.i += 1
            return inner
        if c == ".":
            self.i += 1
            return ("any",)
        j = self.i
        while j < len(s) and (s[j].isalnum() or s[j] in "-_"):
            j += 1
        assert j > self.i, f"unexpected {s[self.i:]!r}"
        name = s[self.i:j]
        self.i = j
        return ("ref", name)
