"""Reasoning ("thinking") in a model's output: split it from the answer as it streams.

Why: reasoning models write their chain of thought between markers (`<think>` ...
`</think>` for Qwen 3 / DeepSeek R1 / QwQ, `<|channel>thought` ... `<channel|>` for
Gemma 4). The engine contract streams it as ThinkingDelta, separate from TextDelta, and
counts its tokens (Usage.thinking_tokens). Markers must never leak into either stream,
even when a marker arrives split across decoded pieces.

- `ThinkingSplitter(open, close, starts_inside=False)`: incremental `push`/`finish`.
  `starts_inside=True` is for templates whose generation prompt already opened the
  block (DeepSeek R1 ends its prompt with `<think>\\n`); `prompt_opens_thinking()` tells
  from the rendered prompt. With `trim=True` (default) whitespace at the edges of a
  block is dropped (`<think>\\n...\\n</think>\\n\\n` is layout, not content), which costs
  at most holding back trailing whitespace until the next non-space character.
- Token accounting: after each `push(piece)`, `last_was_thinking` says whether that
  piece was (or ended, or began) reasoning - count the sampled token as a thinking token
  when it is True (`thinking_pieces` counts those pushes). `in_thinking` (a property) is
  the current state; `thinking_chars` the reasoning characters emitted.
- `detect_thinking(template_source)` picks the marker pair a template uses.
- `OutputParser` composes this splitter and a tool-call parser: reasoning first, then
  tool calls parsed from the non-thinking text only.
"""

from __future__ import annotations

from ..events import TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from .toolcalls.parser import ToolCallParser, _held_prefix

ThinkEvent = TextDelta | ThinkingDelta
OutputEvent = TextDelta | ThinkingDelta | ToolCallDelta | ToolCall

#: Qwen 3, QwQ, DeepSeek R1 and most open reasoning models.
THINK_TAGS: tuple[str, str] = ("<think>", "</think>")
#: Gemma 4: the thought channel (the "thought" label belongs to the opener).
GEMMA4_CHANNEL: tuple[str, str] = ("<|channel>thought", "<channel|>")

_WS = " \t\r\n"


def detect_thinking(template_source: str | None) -> tuple[str, str] | None:
    """The (open, close) markers a chat template uses, or None if it shows no reasoning."""
    src = template_source or ""
    if "<|channel>" in src:
        return GEMMA4_CHANNEL
    if "<think>" in src or "enable_thinking" in src:
        return THINK_TAGS
    return None


def prompt_opens_thinking(prompt: str, markers: tuple[str, str]) -> bool:
    """True when a rendered prompt ends inside an open reasoning block (so the model's
    output starts inside it: pass `starts_inside=True`)."""
    return prompt.rstrip(_WS).endswith(markers[0])


class ThinkingSplitter:
    def __init__(self, open_marker: str = THINK_TAGS[0], close_marker: str = THINK_TAGS[1], *,
                 starts_inside: bool = False, trim: bool = True) -> None:
        if not open_marker or not close_marker:
            raise ValueError("thinking markers must be non-empty")
        self.open_marker = open_marker
        self.close_marker = close_marker
        self.trim = trim
        self._inside = starts_inside
        self._buf = ""
        self._ws = ""  # trailing whitespace held back (trim mode)
        # At the start of a block that a marker opened (or of reasoning the prompt opened):
        # leading whitespace is dropped. The reply's own first text keeps its whitespace.
        self._block_start = starts_inside
        self._finished = False
        #: Characters of reasoning emitted so far.
        self.thinking_chars = 0
        #: Whether the last push() held reasoning or a marker (count its token as thinking).
        self.last_was_thinking = starts_inside
        #: How many push() calls so far had `last_was_thinking` (pieces of reasoning).
        self.thinking_pieces = 0

    @property
    def in_thinking(self) -> bool:
        """Inside a reasoning block (after every marker fully received so far)."""
        return self._inside

    def push(self, text: str) -> list[ThinkEvent]:
        if self._finished:
            raise RuntimeError("push() after finish()")
        out: list[ThinkEvent] = []
        was_inside = self._inside
        crossed = False
        self._buf += text
        while True:
            marker = self.close_marker if self._inside else self.open_marker
            idx = self._buf.find(marker)
            if idx < 0:
                hold = _held_prefix(self._buf, (marker,))
                cut = len(self._buf) - hold
                self._emit(out, self._buf[:cut], block_ends=False)
                self._buf = self._buf[cut:]
                break
            self._emit(out, self._buf[:idx], block_ends=True)
            self._buf = self._buf[idx + len(marker):]
            self._inside = not self._inside
            self._block_start = True
            crossed = True
        self.last_was_thinking = was_inside or crossed or self._inside
        self.thinking_pieces += self.last_was_thinking
        return out

    def finish(self) -> list[ThinkEvent]:
        """End of output: a held partial marker is content; an open block just ends."""
        if self._finished:
            return []
        self._finished = True
        out: list[ThinkEvent] = []
        rest, self._buf = self._buf, ""
        self._emit(out, rest, block_ends=True, final=True)
        return out

    def _emit(self, out: list[ThinkEvent], text: str, *, block_ends: bool, final: bool = False) -> None:
        if self.trim:
            if self._block_start:
                text = text.lstrip(_WS)
                if text:
                    self._block_start = False
            text = self._ws + text
            self._ws = ""
            if final and not self._inside:
                pass  # the reply's own trailing whitespace is the model's to keep
            elif block_ends:
                text = text.rstrip(_WS)
            else:
                body = text.rstrip(_WS)
                self._ws = text[len(body):]
                text = body
        if not text:
            return
        cls = ThinkingDelta if self._inside else TextDelta
        if cls is ThinkingDelta:
            self.thinking_chars += len(text)
        if out and type(out[-1]) is cls:
            out[-1].text += text
        else:
            out.append(cls(text))


class OutputParser:
    """Model output → events: reasoning split off first, then tool calls parsed from the
    remaining text. Either stage may be None (then it is skipped)."""

    def __init__(self, *, thinking: ThinkingSplitter | None = None, tools: ToolCallParser | None = None) -> None:
        self.thinking = thinking
        self.tools = tools

    @property
    def saw_tool_call(self) -> bool:
        return self.tools is not None and self.tools.saw_tool_call

    @property
    def in_thinking(self) -> bool:
        return self.thinking is not None and self.thinking.in_thinking

    @property
    def last_was_thinking(self) -> bool:
        """Count the token just pushed as a thinking token when True."""
        return self.thinking is not None and self.thinking.last_was_thinking

    def push(self, text: str) -> list[OutputEvent]:
        events: list[ThinkEvent] = self.thinking.push(text) if self.thinking else [TextDelta(text)]
        return self._tools(events, final=False)

    def finish(self, cut: bool = False) -> list[OutputEvent]:
        """`cut`: the token limit ended the output (ToolCallParser.finish)."""
        events: list[ThinkEvent] = self.thinking.finish() if self.thinking else []
        return self._tools(events, final=True, cut=cut)

    def _tools(self, events: list[ThinkEvent], *, final: bool, cut: bool = False) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        for ev in events:
            if isinstance(ev, TextDelta) and self.tools is not None:
                produced: list[OutputEvent] = list(self.tools.push(ev.text))
            else:
                produced = [ev]
            for p in produced:
                _append(out, p)
        if final and self.tools is not None:
            for p in self.tools.finish(cut):
                _append(out, p)
        return out


def _append(out: list[OutputEvent], ev: OutputEvent) -> None:
    if isinstance(ev, (TextDelta, ThinkingDelta)):
        if not ev.text:
            return
        if out and type(out[-1]) is type(ev):
            out[-1] = type(ev)(out[-1].text + ev.text)
            return
    out.append(ev)
