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
from dataclasses import dataclass

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
    """A terminal (`ref` empty) or a rule reference; a group is an anonymous rule."""

    ref: str = ""
    empty_term: bool = False
    optional: bool = False  # ?, *, {0,...}


Rules = dict[str, list[list[_Item]]]


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


def _parse(text: str) -> Rules:
    """Rule name -> alternatives -> items; each `( ... )` becomes a rule named `(n)`."""
    toks = _tokens(text)
    rules: Rules = {}
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
                group = f"({len(rules)})"
                rules[group] = []  # reserve the name before the inner groups take theirs
                rules[group] = alternatives(depth + 1)
                alts[-1].append(_Item(ref=group))
            elif kind == "name":
                alts[-1].append(_Item(ref=val))
            elif kind in ("string", "cls") or val == ".":
                alts[-1].append(_Item(empty_term=val == '""'))
            elif kind in ("rep", "op") and alts[-1]:
                low = val.strip("{} ").split(",")[0].strip() if kind == "rep" else ""
                if val in ("?", "*") or (kind == "rep" and low in ("", "0")):
                    alts[-1][-1].optional = True
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


def _nullable(rules: Rules) -> set[str]:
    """The rules that can match nothing, in time linear in the grammar (a worklist:
    an alternative is empty once each of its items is optional or an empty rule)."""
    waiting: list[int] = []  # per alternative: items not yet known to match nothing
    owner: list[str] = []
    users: dict[str, list[int]] = {}  # rule -> the alternatives that wait for it
    found: set[str] = set()
    ready: list[str] = []
    for name, alts in rules.items():
        for alt in alts:
            k = len(waiting)
            owner.append(name)
            pending = 0
            for item in alt:
                if item.optional or item.empty_term:
                    continue
                if not item.ref:
                    pending = -1  # a terminal that must match: never empty
                    break
                pending += 1
                users.setdefault(item.ref, []).append(k)
            waiting.append(pending)
            if pending == 0 and name not in found:
                found.add(name)
                ready.append(name)
    while ready:
        for k in users.get(ready.pop(), ()):
            if waiting[k] > 0:
                waiting[k] -= 1
                if waiting[k] == 0 and owner[k] not in found:
                    found.add(owner[k])
                    ready.append(owner[k])
    return found


def stack_bound(text: str) -> int:
    """The estimated largest number of parse stacks `text` can hold at once."""
    rules = _parse(text)
    empty = _nullable(rules)

    def item_nullable(item: _Item) -> bool:
        return item.optional or item.empty_term or item.ref in empty

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

    @memo
    def rule_first(alts: list[list[_Item]]) -> int:
        """Stacks when the parser stands just before the rule: its alternatives add up."""
        return sum(windows(alt)[0] if alt else 1 for alt in alts)

    def first(item: _Item) -> int:
        return rule_first(item.ref) if item.ref else 1

    @memo
    def rule_inner(alts: list[list[_Item]]) -> int:
        """Stacks when the parser stands anywhere inside one of the rule's alternatives."""
        best = 1
        for alt in alts:
            best = max(best, *windows(alt)) if alt else best
            for item in alt:
                if item.ref:
                    best = max(best, rule_inner(item.ref))
        return best

    # The worst place the parser can stand: before a rule's alternatives, or inside one.
    return max((max(rule_first(name), rule_inner(name)) for name in rules), default=0)
