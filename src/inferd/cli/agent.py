"""`inferd run` / `inferd chat` for agents and scripts: tools, thinking, schemas, `--json`.

With `--json`, stdout carries one JSON object per line with an `event` discriminator,
in the shape of zeph-core's `JsonEvent` (seed 004), so a harness can drive inferd
from a shell:

    boot{version,bare,auto}  query{text,queue_len}  response_chunk{text}
    thinking_chunk{text} (ours)  tool_call{tool,args,id}  tool_result{tool,id,output,is_error}
    response_end  cost{input_tokens,output_tokens,total_usd}  status{message}  error{message}

`error` is the last line of a failed run, which then exits non-zero. In `chat --json`
every stdin line is a prompt, except a line holding a JSON object, which answers the
pending tool call: {"id": "call_…", "output": "…", "is_error": false} (`id` may be
left out while one call is pending; `output` may be any JSON value). Once every
pending call has its result, the model continues by itself. `--tool-choice required`
forces a call in answer to each prompt; the turn that answers tool results is `auto`.

Tools and thinking need protocol v2, so these commands speak v2 when a flag needs it
(`--tools`, `--tool-choice`, `--thinking`) and v1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from inferd import __version__
from inferd.client.client import Client
from inferd.client.client_v2 import ClientV2
from inferd.client.errors import ClientError
from inferd.client.wait import WaitPermanent, WaitTimeout, dial_and_wait_ready
from inferd.proto.v1 import DoneFrame, ErrorFrame, Message, Request, ResponseFormat, Role, TokenFrame
from inferd.proto.v2 import (
    DoneFrameV2,
    FrameV2,
    MessageV2,
    RequestV2,
    RoleV2,
    TextBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
)

from .common import describe


class UsageError(Exception):
    """A flag's value cannot be used; the message says which and why."""


def load_tools(path: str) -> list[Tool]:
    """Tools from a JSON file: a list of {name, description, input_schema} or of the
    OpenAI shape {"type":"function","function":{name, description, parameters}}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tools {path}: {describe(exc)}") from None
    if not isinstance(data, list):
        raise UsageError(f"--tools {path}: expected a JSON list of tools")
    tools = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and item.get("type") == "function" and isinstance(item.get("function"), dict):
            fn = item["function"]
            item = {"name": fn.get("name"), "description": fn.get("description", ""),
                    "input_schema": fn.get("parameters", {"type": "object"})}
        try:
            tools.append(Tool.model_validate(item))
        except ValueError as exc:
            raise UsageError(f"--tools {path}: tool {i}: {describe(exc).splitlines()[0]}") from None
    return tools


def load_schema(path: str) -> dict[str, Any]:
    try:
        schema = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--json-schema {path}: {describe(exc)}") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--json-schema {path}: a JSON Schema is an object")
    return schema


@dataclass
class AgentOptions:
    system: str | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str | None = None
    thinking: bool | None = None
    schema: dict[str, Any] | None = None
    json: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_v2(self) -> bool:
        return bool(self.tools) or self.tool_choice is not None or self.thinking is not None


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
            self._end_line()
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


@dataclass
class TurnResult:
    ok: bool
    stop_reason: str = ""
    calls: list[ToolUseBlock] = field(default_factory=list)
    text: str = ""
    error: str = ""
    completion_tokens: int = 0
    rate: float = 0.0


class Conversation:
    """The history of one run or chat, in v2 blocks (which can say everything v1 can)."""

    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.messages: list[MessageV2] = []
        if opts.system:
            self.messages.append(MessageV2(role=RoleV2.SYSTEM, content=[TextBlock(text=opts.system)]))
        self.pending: dict[str, str] = {}  # call id -> tool name, awaiting results
        self._results: list[ToolResultBlock] = []
        self._ids = 0

    def _next_id(self) -> str:
        self._ids += 1
        return f"cli-{self._ids}-{time.monotonic_ns() % 1_000_000}"

    def add_user(self, text: str) -> None:
        self.messages.append(MessageV2(role=RoleV2.USER, content=[TextBlock(text=text)]))

    def answer(self, obj: dict[str, Any]) -> tuple[str, str, str, bool]:
        """Record one tool result from a stdin object; (id, tool, output, is_error)."""
        if not self.pending:
            raise UsageError("a tool result arrived but no tool call is pending")
        call_id = obj.get("id") or obj.get("tool_call_id")
        if call_id is None:
            if len(self.pending) != 1:
                raise UsageError(f"several tool calls are pending ({', '.join(self.pending)}): say which with \"id\"")
            call_id = next(iter(self.pending))
        if call_id not in self.pending:
            raise UsageError(f"no pending tool call has id {call_id!r}")
        output = obj.get("output", obj.get("content", ""))
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        is_error = bool(obj.get("is_error", False))
        tool = self.pending.pop(call_id)
        self._results.append(ToolResultBlock(tool_call_id=call_id, content=[TextBlock(text=text)]))
        if not self.pending:
            self.messages.append(MessageV2(role=RoleV2.USER, content=list(self._results)))
            self._results.clear()
        return call_id, tool, text, is_error

    def v2_request(self) -> RequestV2:
        o = self.opts
        extra: dict[str, Any] = dict(o.sampling)
        if o.tools:
            extra["tools"] = o.tools
        if o.tool_choice is not None:
            # `required` asks for a call in answer to the user's prompt; once results are
            # in, the model may answer (or call again): otherwise it could only ever call.
            answering_results = bool(self.messages) and any(
                isinstance(b, ToolResultBlock) for b in self.messages[-1].content)
            extra["tool_choice"] = "auto" if o.tool_choice == "required" and answering_results else o.tool_choice
        if o.thinking is not None:
            extra["thinking"] = o.thinking
        if o.schema is not None:
            extra["response_format"] = ResponseFormat(type="json_schema", schema=o.schema)
        return RequestV2(id=self._next_id(), messages=list(self.messages), **extra)

    def v1_request(self) -> Request:
        messages = [Message(role=Role(m.role.value), content="".join(b.text for b in m.content if isinstance(b, TextBlock)))
                    for m in self.messages]
        extra: dict[str, Any] = dict(self.opts.sampling)
        if self.opts.schema is not None:
            extra["response_format"] = ResponseFormat(type="json_schema", schema=self.opts.schema)
        return Request(id=self._next_id(), messages=messages, **extra)

    async def turn(self, client: Client, emit: Emitter) -> TurnResult:
        """Send the conversation, stream the reply through `emit`, and record it."""
        v2 = isinstance(client, ClientV2)
        request = self.v2_request() if v2 else self.v1_request()
        started = time.monotonic()
        text: list[str] = []
        calls: list[ToolUseBlock] = []
        result = TurnResult(ok=False)
        async for frame in client.generate(request):  # type: ignore[arg-type]
            if isinstance(frame, TokenFrame):
                text.append(frame.content)
                emit.chunk(frame.content)
            elif isinstance(frame, FrameV2):
                block = frame.block
                if block.type == "text":
                    text.append(block.delta)
                    emit.chunk(block.delta)
                elif block.type == "thinking":
                    emit.thinking(block.delta)
                else:
                    calls.append(block)
                    emit.tool_call(block.name, block.input, block.tool_call_id)
            elif isinstance(frame, (DoneFrame, DoneFrameV2)):
                if isinstance(frame, DoneFrame) and not text and frame.content:
                    text.append(frame.content)
                    emit.chunk(frame.content)
                usage = frame.usage
                inp = getattr(usage, "prompt_tokens", None) or getattr(usage, "input_tokens", 0)
                out = getattr(usage, "completion_tokens", None) or getattr(usage, "output_tokens", 0)
                emit.response_end()
                emit.cost(inp, out)
                elapsed = time.monotonic() - started
                rate = frame.timings.tokens_per_second if frame.timings else (out / elapsed if elapsed > 0 else 0.0)
                result = TurnResult(ok=True, stop_reason=str(frame.stop_reason), calls=calls, text="".join(text),
                                    completion_tokens=out, rate=rate)
            elif isinstance(frame, ErrorFrame):
                result = TurnResult(ok=False, error=f"{frame.code}: {frame.message}", text="".join(text))
        if result.ok:
            content: list[Any] = [TextBlock(text=result.text)] if result.text else []
            content += calls
            if content:
                self.messages.append(MessageV2(role=RoleV2.ASSISTANT, content=content))
            self.pending = {c.tool_call_id: c.name for c in calls}
        return result


class Unreachable(Exception):
    """The daemon could not be dialed; the message says where and why."""


async def dial(opts: AgentOptions, addr: str, api_key: str | None, wait: float) -> Client:
    factory = ClientV2.dial if opts.needs_v2 else Client.dial
    try:
        return await dial_and_wait_ready(wait, lambda: factory(addr, api_key))
    except WaitTimeout as exc:
        last = describe(exc.__cause__) if exc.__cause__ else "no answer"
        raise Unreachable(f"daemon not reachable at {addr} within {wait:g}s ({last})") from None
    except WaitPermanent as exc:
        hint = " (tools and thinking need the v2 socket: is the daemon running with --v2?)" if opts.needs_v2 else ""
        raise Unreachable(f"cannot connect to {addr}: {describe(exc.error)}{hint}") from None


async def agent_run(prompt: str, opts: AgentOptions, addr: str, api_key: str | None, wait: float) -> int:
    """`inferd run` with agent flags: one turn (tool calls are printed, not run)."""
    emit = Emitter(opts.json)
    emit.boot(bare=opts.system is None and not opts.tools)
    conversation = Conversation(opts)
    conversation.add_user(prompt)
    emit.query(prompt)
    try:
        async with await dial(opts, addr, api_key, wait) as client:
            result = await conversation.turn(client, emit)
    except (ClientError, OSError, Unreachable) as exc:
        emit.error(describe(exc))
        return 1
    if not result.ok:
        emit.error(result.error)
        return 1
    return 0


class AgentChat:
    """`inferd chat` with agent flags or `--json`: prompts and tool results from stdin
    lines (a line holding a JSON object answers the pending tool call), the reply as
    events on stdout (`--json`) or as text."""

    def __init__(self, opts: AgentOptions, addr: str, api_key: str | None, wait: float) -> None:
        self.opts = opts
        self.addr, self.api_key, self.wait = addr, api_key, wait
        self.emit = Emitter(opts.json)
        self.conversation = Conversation(opts)

    async def run(self, lines: TextIO) -> int:
        self.emit.boot(bare=self.opts.system is None and not self.opts.tools)
        try:
            async with await dial(self.opts, self.addr, self.api_key, self.wait) as client:
                return await self._loop(client, lines)
        except (ClientError, OSError, Unreachable) as exc:
            self.emit.error(describe(exc))
            return 1

    async def _loop(self, client: Client, lines: TextIO) -> int:
        conv, emit = self.conversation, self.emit
        while True:
            line = await _readline(lines)
            if line is None:
                if conv.pending:
                    emit.error(f"input ended with tool call(s) pending: {', '.join(conv.pending)}")
                    return 1
                return 0
            text = line.strip()
            if not text:
                continue
            obj = _json_object(text)
            if obj is not None:
                try:
                    call_id, tool, output, is_error = conv.answer(obj)
                except UsageError as exc:
                    emit.error(str(exc))
                    return 1
                emit.tool_result(tool, call_id, output, is_error)
                if conv.pending:
                    continue  # more results to come before the model may continue
            else:
                if conv.pending:
                    emit.error(f"tool call(s) pending ({', '.join(conv.pending)}): answer them before the next prompt")
                    return 1
                conv.add_user(line.rstrip("\r\n"))
                emit.query(line.rstrip("\r\n"))
            result = await conv.turn(client, emit)
            if not result.ok:
                emit.error(result.error)
                return 1


async def _readline(stream: TextIO) -> str | None:
    line = await asyncio.to_thread(stream.readline)
    return line if line else None


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
