"""How many parse stacks a GBNF grammar can hold at once: what multiplies the cost of
each generated token (THREAT_MODEL F-11, ADR 0032).

llama.cpp keeps one stack per way the text so far can continue, and a constrained token
costs a pass over the whole vocabulary for every stack. Bytes do not bound that:
`root ::= "zq"? "zq"? ... "\\x01"` with K optionals is K+1 stacks before anything is
generated (K = 800 is 4.8 KB and 1.7 s per token on a 262k vocabulary). `stack_bound`
estimates the largest number of stacks from the grammar's shape, without libllama:

- an item that may match nothing (`x?`, `x*`, `x{0,n}`, `""`, a group or rule that can
  be empty) lets the parser stand before it and before what follows at once, so a run
  of such items adds up, up to and including the first item that must match;
- a group or rule with alternatives stands at the start of each of them: they add up;
- a rule used inside another counts with its own bound (nesting multiplies).

It is an estimate (repetition after a first match and left context are not followed),
so proto/limits.py's MAX_GRAMMAR_STACKS is the first line only: the llama.cpp scheduler
also bounds each token's grammar pass in CPU time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r'''
    (?P<space>[ \t\r\n]+|\#[^\n]*)
  | (?P<define>::=)
  | (?P<name>[A-Za-z0-9_-]+)
  | (?P<string>"(?:\\.|[^"\\])*")
  | (?P<cls>\[(?:\\.|[^\]\\])*\])
  | (?P<rep>\{\s*\d*\s*(?:,\s*\d*\s*)?\})
  | (?P<op>[()|?*+.])
''', re.VERBOSE | re.DOTALL)


class GrammarShapeError(ValueError):
    """The grammar text could not be read (libllama's parser will say why)."""


@dataclass
class _Item:
    kind: str  # "term", "ref", "group"
    ref: str = ""
    alts: list[list[_Item]] = field(default_factory=list)
    empty_term: bool = False
    optional: bool = False  # ?, *, {0,...}
    first: int = 0  # memo of stack_bound's `first` (0: not yet known)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise GrammarShapeError(f"unexpected {text[pos]!r} at byte {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "space":
            out.append((kind, m.group()))
    return out


def _parse(text: str) -> dict[str, list[list[_Item]]]:
    toks = _tokens(text)
    rules: dict[str, list[list[_Item]]] = {}
    i = 0

    def alternatives(depth: int) -> list[list[_Item]]:
        nonlocal i
        alts: list[list[_Item]] = [[]]
        while i < len(toks):
            kind, val = toks[i]
            if depth == 0 and kind == "name" and i + 1 < len(toks) and toks[i + 1][0] == "define":
                break  # the next rule
            i += 1
            if kind == "op" and val == "|":
                alts.append([])
            elif kind == "op" and val == ")":
                if depth == 0:
                    raise GrammarShapeError("unbalanced ')'")
                return alts
            elif kind == "op" and val == "(":
                alts[-1].append(_Item("group", alts=alternatives(depth + 1)))
            elif kind == "name":
                alts[-1].append(_Item("ref", ref=val))
            elif kind in ("string", "cls") or val == ".":
                alts[-1].append(_Item("term", empty_term=val == '""'))
            elif kind in ("rep", "op") and alts[-1]:
                last = alts[-1][-1]
                low = val.strip("{} ").split(",")[0].strip() if kind == "rep" else ""
                if val in ("?", "*") or (kind == "rep" and low in ("", "0")):
                    last.optional = True
            else:
                raise GrammarShapeError(f"unexpected {val!r}")
        if depth:
            raise GrammarShapeError("unbalanced '('")
        return alts

    while i < len(toks):
        if not (toks[i][0] == "name" and i + 1 < len(toks) and toks[i + 1][0] == "define"):
            raise GrammarShapeError(f"expected a rule name before {toks[i][1]!r}")
        name = toks[i][1]
        i += 2
        rules.setdefault(name, []).extend(alternatives(0))
    return rules


def stack_bound(text: str) -> int:
    """The estimated largest number of parse stacks `text` can hold at once."""
    rules = _parse(text)
    nullable: dict[str, bool] = {name: False for name in rules}

    def item_nullable(item: _Item) -> bool:
        if item.optional or item.empty_term:
            return True
        if item.kind == "ref":
            return nullable.get(item.ref, False)
        if item.kind == "group":
            return any(all(item_nullable(x) for x in alt) for alt in item.alts)
        return False

    changed = True
    while changed:  # a fixpoint: rules can be empty through other rules
        changed = False
        for name, alts in rules.items():
            if not nullable[name] and any(all(item_nullable(x) for x in alt) for alt in alts):
                nullable[name] = changed = True

    def memo(fn):  # noqa: ANN001, ANN202 - per-rule memo, recursion counted once
        done: dict[str, int] = {}
        visiting: set[str] = set()

        def rule(name: str) -> int:
            if name in done:
                return done[name]
            if name in visiting or name not in rules:
                return 1
            visiting.add(name)
            done[name] = value = fn(rules[name])
            visiting.discard(name)
            return value
        return rule

    def windows(seq: list[_Item]) -> list[int]:
        # Standing before item j: it, and every item after it while the ones before
        # could match nothing, up to the first that must match. From the end: linear.
        out = [0] * len(seq)
        after = 0
        for j in range(len(seq) - 1, -1, -1):
            item = seq[j]
            after = first(item) + (after if item_nullable(item) else 0)
            out[j] = after
        return out

    def lead(seq: list[_Item]) -> int:
        return windows(seq)[0] if seq else 1

    @memo
    def rule_first(alts: list[list[_Item]]) -> int:
        return sum(lead(alt) for alt in alts)

    def first(item: _Item) -> int:
        """Stacks when the parser stands just before `item`."""
        if item.kind == "ref":
            return rule_first(item.ref)
        if item.kind == "group":
            if not item.first:
                item.first = sum(lead(alt) for alt in item.alts)
            return item.first
        return 1

    @memo
    def rule_inner(alts: list[list[_Item]]) -> int:
        return max((seq_inner(alt) for alt in alts), default=1)

    def seq_inner(seq: list[_Item]) -> int:
        """Stacks when the parser stands anywhere inside `seq` (one alternative)."""
        best = max(windows(seq), default=1)
        for item in seq:
            if item.kind == "ref":
                best = max(best, rule_inner(item.ref))
            elif item.kind == "group":
                best = max(best, max((seq_inner(alt) for alt in item.alts), default=1))
        return best

    # The worst place the parser can stand: before a rule's alternatives, or inside one.
    return max((max(rule_first(name), rule_inner(name)) for name in rules), default=0)
