"""`inferd run` / `inferd chat` for agents and scripts: tools, thinking, schemas, `--json`.

With `--json`, stdout carries one JSON object per line with an `event` discriminator,
in the shape of zeph-core's `JsonEvent` (seed 004), so a harness can drive inferd
from a shell:

    boot{version,bare,auto}  query{text,queue_len}  response_chunk{text}
    thinking_chunk{text} (ours)  tool_call{tool,args,id}  tool_result{tool,id,output,is_error}
    response_end  cost{input_tokens,output_tokens,total_usd}  command_ack{command,text}
    status{message}  error{message}

(docs/cli.md says when each comes.) `--json` asks the daemon for progress frames, so
a request that waits shows `status` lines (queue position, prompt reading, context)
before its first token, and `query.queue_len` is its queue position.

`error` is the last line of a failed run, which then exits non-zero. In `chat --json`
every stdin line is a prompt, except a slash command (`/reset`, `/exit`, `/model
NAME`: cli/slash.py, answered by `command_ack`) and a line holding a JSON object,
which answers the pending tool call: {"id": "call_…", "output": "…", "is_error": false}
(`id` may be left out while one call is pending; `output` may be any JSON value).
Once every pending call has its result, the model continues by itself. `--tool-choice required`
forces a call in answer to each prompt; the turn that answers tool results is `auto`.

Tools and thinking need protocol v2, so these commands speak v2 when a flag needs it
(`--tools`, `--tool-choice`, `--thinking`) and v1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from inferd.client.client import Client
from inferd.client.client_v2 import ClientV2
from inferd.client.errors import ClientError
from inferd.client.events import EventSession
from inferd.client.wait import WaitPermanent, WaitTimeout, dial_and_wait_ready
from inferd.proto.v1 import Message, Request, ResponseFormat, Role
from inferd.proto.v2 import (
    MessageV2,
    RequestV2,
    RoleV2,
    TextBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
)

from .common import describe
from .emitter import Emitter, TurnView
from .slash import Command, parse_command, prompt_text, unknown


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


@dataclass
class TurnResult:
    ok: bool
    stop_reason: str = ""
    calls: list[ToolUseBlock] = field(default_factory=list)
    text: str = ""
    error: str = ""
    completion_tokens: int = 0


class Conversation:
    """The history of one run or chat, in v2 blocks (which can say everything v1 can)."""

    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        #: The model requests name (`/model NAME`); None: the daemon's default.
        self.model: str | None = None
        #: What the turns of this conversation share (the backend that served the last).
        self.session = EventSession()
        self._ids = 0
        self.reset()

    def reset(self) -> None:
        """A fresh history: the system prompt only, no tool call pending (`/reset`)."""
        self.messages: list[MessageV2] = []
        if self.opts.system:
            self.messages.append(MessageV2(role=RoleV2.SYSTEM, content=[TextBlock(text=self.opts.system)]))
        self.pending: dict[str, str] = {}  # call id -> tool name, awaiting results
        self._results: list[ToolResultBlock] = []

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
        if self.model is not None:
            extra["model"] = self.model
        return RequestV2(id=self._next_id(), messages=list(self.messages), **extra)

    def v1_request(self) -> Request:
        messages = [Message(role=Role(m.role.value), content="".join(b.text for b in m.content if isinstance(b, TextBlock)))
                    for m in self.messages]
        extra: dict[str, Any] = dict(self.opts.sampling)
        if self.opts.schema is not None:
            extra["response_format"] = ResponseFormat(type="json_schema", schema=self.opts.schema)
        if self.model is not None:
            extra["model"] = self.model
        return Request(id=self._next_id(), messages=messages, **extra)

    async def turn(self, client: Client, emit: Emitter, query: str | None = None) -> TurnResult:
        """Send the conversation, show the reply through `emit`, and record it.

        `query` is the prompt that started this turn (emitted as `query` once the
        daemon has said where the request waits). With `--json` the request asks for
        progress frames, which become `status` lines before the first token.
        """
        v2 = isinstance(client, ClientV2)
        request = self.v2_request() if v2 else self.v1_request()
        view = TurnView(emit, query)
        frames = client.generate(request, progress=True if emit.as_json else None)  # type: ignore[arg-type]
        async for event in self.session.events(frames):
            view.show(event, self.session.queue_position)
        text = "".join(view.text)
        if not view.ok:
            return TurnResult(ok=False, error=view.error, text=text)
        calls = [ToolUseBlock(tool_call_id=c.id, name=c.name, input=c.args) for c in view.calls]
        content: list[Any] = [TextBlock(text=text)] if text else []
        content += calls
        if content:
            self.messages.append(MessageV2(role=RoleV2.ASSISTANT, content=content))
        self.pending = {c.tool_call_id: c.name for c in calls}
        return TurnResult(ok=True, stop_reason=str(view.reason), calls=calls, text=text,
                          completion_tokens=view.output_tokens)


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
    try:
        client = await dial(opts, addr, api_key, wait)
    except (ClientError, OSError, Unreachable) as exc:
        emit.query(prompt)
        emit.error(describe(exc))
        return 1
    async with client:
        result = await conversation.turn(client, emit, query=prompt)
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
            command = parse_command(text)
            if command is not None:
                if not self.command(command):
                    return 0
                continue
            obj = _json_object(text)
            query = None
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
                query = prompt_text(line.rstrip("\r\n"))
                conv.add_user(query)
            result = await conv.turn(client, emit, query=query)
            if not result.ok:
                emit.error(result.error)
                return 1

    def command(self, command: Command) -> bool:
        """Carry out a slash command and acknowledge it; False for `/exit`."""
        conv, emit = self.conversation, self.emit
        if command.name == "/exit":
            emit.command_ack(command.name, "bye")
            return False
        if command.name == "/reset":
            dropped = len(conv.pending)
            conv.reset()
            emit.command_ack(command.name, "history cleared" + (f", {dropped} pending tool call(s) dropped"
                                                                 if dropped else ""))
        elif command.name == "/model":
            if command.arg:
                conv.model = command.arg
                emit.command_ack(command.name, f"requests now name model {command.arg}")
            else:
                emit.command_ack(command.name, f"model: {conv.model or 'the daemon default'}")
        else:
            emit.command_ack(command.name, unknown(command))
        return True


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
