"""Where a turn of `inferd run`/`chat` goes: the terminal, or `--json` events (seed 004).

`Emitter` writes zeph-core's JsonEvent shapes (one JSON object per line, `event`
discriminator) or, without `--json`, text on stdout and notes dimmed on stderr.
`TurnView` is the one mapping from the client's turn events (`inferd.client.events`)
to them; docs/cli.md lists every event, when it comes, and the ones a CLI cannot send.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from inferd import __version__
from inferd.client.events import (
    ContextUsage,
    EngineEvent,
    Error,
    Footer,
    Info,
    SpinnerStart,
    StatusUpdate,
    TextDelta,
    ThinkingDelta,
    ToolCallStart,
    TurnEnd,
    TurnEndReason,
    TurnStart,
    Warn,
)


class Emitter:
    """Where a turn's output goes: the terminal (text on stdout, the rest dimmed on
    stderr) or JSON lines on stdout."""

    def __init__(self, as_json: bool, out: TextIO | None = None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout
        self._open_line = False

    def _event(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.out.flush()

    def _note(self, text: str) -> None:
        self._end_line()
        print(f"\x1b[2m{text}\x1b[0m" if sys.stderr.isatty() else text, file=sys.stderr, flush=True)

    def boot(self, *, bare: bool) -> None:
        if self.as_json:
            self._event("boot", version=__version__, bare=bare, auto=False)

    def query(self, text: str, queue_len: int = 0) -> None:
        if self.as_json:
            self._event("query", text=text, queue_len=queue_len)

    def chunk(self, text: str) -> None:
        if self.as_json:
            self._event("response_chunk", text=text)
        else:
            self.out.write(text)
            self.out.flush()
            self._open_line = True

    def thinking(self, text: str) -> None:
        if self.as_json:
            self._event("thinking_chunk", text=text)
        else:
            self._note(f"[thinking] {text}")

    def tool_call(self, name: str, args: Any, id: str) -> None:
        if self.as_json:
            self._event("tool_call", tool=name, args=args, id=id)
        else:
            self._note(f"[tool call {id}] {name} {json.dumps(args, ensure_ascii=False)}")

    def tool_result(self, name: str, id: str, output: str, is_error: bool) -> None:
        if self.as_json:
            self._event("tool_result", tool=name, id=id, output=output, is_error=is_error)

    def response_end(self) -> None:
        if self.as_json:
            self._event("response_end")
        else:
            self._end_line()

    def cost(self, input_tokens: int, output_tokens: int) -> None:
        if self.as_json:
            self._event("cost", input_tokens=input_tokens, output_tokens=output_tokens, total_usd=0.0)

    def command_ack(self, command: str, text: str) -> None:
        if self.as_json:
            self._event("command_ack", command=command, text=text)
        else:
            self._note(f"[{text}]")

    def status(self, message: str) -> None:
        if self.as_json:
            self._event("status", message=message)
        else:
            self._note(message)

    def error(self, message: str) -> None:
        if self.as_json:
            self._event("error", message=message)
        else:
            self._end_line()
            print(f"error: {message}", file=sys.stderr, flush=True)

    def _end_line(self) -> None:
        if self._open_line:
            self.out.write("\n")
            self.out.flush()
            self._open_line = False


def describe_status(update: StatusUpdate, context: ContextUsage | None) -> str:
    """A StatusUpdate (and the ContextUsage just before it) as one status line."""
    text = f"model {update.model}" if update.model else "default model"
    if update.provider:
        text += f" on {update.provider}"
    if context is not None:
        text += f": context {context.used}/{context.max} tokens ({update.context_pct:g}%)"
    return text


@dataclass
class TurnView:
    """Shows one turn's events through an Emitter and keeps what the turn produced.

    `query` (the prompt that started the turn, if one did) is emitted before the
    turn's first event after TurnStart, so that its `queue_len` is the queue position
    the daemon gave the request (`queue_position()`; 0 when it did not wait).
    """

    emit: Emitter
    query: str | None = None
    text: list[str] = field(default_factory=list)
    calls: list[ToolCallStart] = field(default_factory=list)
    reason: TurnEndReason | None = None
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    _context: ContextUsage | None = None

    def show(self, event: EngineEvent, queue_position: int = 0) -> None:
        emit = self.emit
        if self.query is not None and not isinstance(event, TurnStart):
            emit.query(self.query, queue_len=queue_position)
            self.query = None
        if isinstance(event, TextDelta):
            self.text.append(event.text)
            emit.chunk(event.text)
        elif isinstance(event, ThinkingDelta):
            emit.thinking(event.text)
        elif isinstance(event, ToolCallStart):
            self.calls.append(event)
            emit.tool_call(event.name, event.args, event.id)
        elif isinstance(event, SpinnerStart):
            emit.status(event.message)
        elif isinstance(event, ContextUsage):
            self._context = event
        elif isinstance(event, StatusUpdate):
            if emit.as_json:  # a terminal has its own footer line
                emit.status(describe_status(event, self._context))
            self._context = None
        elif isinstance(event, Info):
            emit.status(f"note: {event.message}")
        elif isinstance(event, Warn):
            emit.status(f"warning: {event.message}")
        elif isinstance(event, Footer):
            self.input_tokens, self.output_tokens = event.prompt_tokens, event.completion_tokens
            emit.response_end()
            emit.cost(event.prompt_tokens, event.completion_tokens)
        elif isinstance(event, Error):
            self.error = f"{event.code}: {event.message}" if event.code else event.message
        elif isinstance(event, TurnEnd):
            self.reason = event.reason
        # TurnStart, ResponseStart, TextDone, the thinking run's edges and SpinnerStop
        # have nothing of their own to show.

    @property
    def ok(self) -> bool:
        return self.reason is not None and self.reason is not TurnEndReason.ERROR
