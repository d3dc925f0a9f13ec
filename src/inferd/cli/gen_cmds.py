"""`inferd run`, `inferd chat` and `inferd embed`: the public client, from a shell."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Optional, TypeVar

import typer

from inferd.client.client import Client
from inferd.client.embed import EmbedClient
from inferd.client.errors import ClientError, UnexpectedEof
from inferd.proto.embed import EmbedErrorFrame, EmbedRequest
from inferd.proto.endpoints import default_embed_addr, default_inference_addr, default_v2_addr
from inferd.proto.v1 import DoneFrame, ErrorFrame, Message, Request, Role, TokenFrame

from .agent import AgentChat, AgentOptions, UsageError, agent_run, load_schema, load_tools
from .common import EXIT_FAIL, connect, describe, die, err, run_async
from .slash import parse_command, prompt_text, unknown

T = TypeVar("T")

_ids = itertools.count(1)


def next_id(kind: str) -> str:
    # Unique enough to find one CLI request in the daemon's log.
    return f"{kind}-{os.getpid()}-{next(_ids)}"


AddrOpt = Annotated[
    Optional[str],
    typer.Option("--addr", envvar="INFERD_ADDR", help="Inference socket, pipe or HOST:PORT.", show_default=False),
]
ApiKeyOpt = Annotated[
    Optional[str],
    typer.Option("--api-key", envvar="INFERD_API_KEY", help="API key for a TCP endpoint.", show_default=False),
]
WaitOpt = Annotated[
    float, typer.Option("--wait", min=0, help="Seconds to keep retrying while the daemon starts.")
]
SystemOpt = Annotated[Optional[str], typer.Option("--system", help="System prompt.", show_default=False)]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", min=0, show_default=False)]
TemperatureOpt = Annotated[Optional[float], typer.Option("--temperature", show_default=False)]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", show_default=False)]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", min=0, show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, show_default=False)]
StopOpt = Annotated[
    Optional[list[str]], typer.Option("--stop", help="Stop sequence (repeatable).", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout, one event each (for scripts).")]
ToolsOpt = Annotated[
    Optional[str], typer.Option("--tools", help="JSON file with the tools the model may call.", show_default=False)
]
ToolChoiceOpt = Annotated[
    Optional[str], typer.Option("--tool-choice", help="auto, none or required.", show_default=False)
]
ThinkingOpt = Annotated[
    Optional[bool], typer.Option("--thinking/--no-thinking", help="Ask for (or against) reasoning.", show_default=False)
]
SchemaOpt = Annotated[
    Optional[str], typer.Option("--json-schema", help="JSON Schema file the reply must match.", show_default=False)
]


def sampling(
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: list[str] | None,
) -> dict[str, Any]:
    """Request fields the user set; the daemon applies its defaults to the rest."""
    fields = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "stop": list(stop) if stop else None,
    }
    return {k: v for k, v in fields.items() if v is not None}


class Turn:
    """What one streamed reply produced."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.done: DoneFrame | None = None
        self.error: ErrorFrame | None = None
        self.elapsed = 0.0


async def stream_reply(client: Client, request: Request, turn: Turn | None = None) -> Turn:
    """Stream a reply to stdout as it arrives and end it with a newline.

    `turn` is filled in as frames arrive, so a caller still knows what was shown
    when the stream fails half-way.
    """
    turn = Turn() if turn is None else turn
    started = time.monotonic()
    out = sys.stdout
    async for frame in client.generate(request):
        if isinstance(frame, TokenFrame):
            turn.text.append(frame.content)
            out.write(frame.content)
            out.flush()
        elif isinstance(frame, DoneFrame):
            turn.done = frame
            if not turn.text and frame.content:
                # A daemon that honours stream:false sends everything here.
                turn.text.append(frame.content)
                out.write(frame.content)
        elif isinstance(frame, ErrorFrame):
            turn.error = frame
    turn.elapsed = time.monotonic() - started
    if turn.text or turn.done is not None:
        out.write("\n")
        out.flush()
    return turn


def report_error(frame: ErrorFrame) -> None:
    err(f"error: {frame.code}: {frame.message}")


async def run(prompt: str, addr: str, api_key: str | None, wait: float, system: str | None, opts: dict[str, Any],
              raw: bool = False) -> int:
    if raw:  # v1's `prompt` extension: the text goes to the model as is, no chat template
        request = Request(id=next_id("run"), prompt=prompt, **opts)
    else:
        messages = []
        if system:
            messages.append(Message(role=Role.SYSTEM, content=system))
        messages.append(Message(role=Role.USER, content=prompt))
        request = Request(id=next_id("run"), messages=messages, **opts)
    client = await connect(Client.dial, addr, api_key, wait)
    async with client:
        turn = await stream_reply(client, request)
    if turn.error is not None:
        report_error(turn.error)
        return EXIT_FAIL
    return 0


def stats_line(turn: Turn) -> str:
    done = turn.done
    assert done is not None
    tokens = done.usage.completion_tokens
    if done.timings is not None:
        rate = done.timings.tokens_per_second
    else:
        rate = tokens / turn.elapsed if turn.elapsed > 0 else 0.0
    text = f"[{tokens} tokens, {rate:.1f} tok/s]"
    return f"\x1b[2m{text}\x1b[0m" if sys.stderr.isatty() else text


class ChatSession:
    """The connection a chat keeps across turns (the daemon's prefix cache likes that)."""

    def __init__(self, addr: str, api_key: str | None, wait: float) -> None:
        self.addr = addr
        self.api_key = api_key
        self.wait = wait
        self.client: Client | None = None

    async def _fresh(self) -> Client:
        await self.aclose()
        self.client = await connect(Client.dial, self.addr, self.api_key, self.wait)
        return self.client

    async def turn(self, request: Request) -> Turn:
        """One reply, redialing once if the kept-open connection turns out to be dead.

        The daemon closes inference connections when it reloads (SIGHUP) or
        restarts; a connection that ends before any frame is replaced, waiting up
        to `wait` for the daemon to come back, so the user does not lose the turn.
        """
        reused = self.client is not None and not self.client.closed
        client = self.client if reused else await self._fresh()
        assert client is not None
        turn = Turn()
        try:
            return await stream_reply(client, request, turn)
        except (UnexpectedEof, ConnectionError):
            if not reused or turn.text:
                raise
        return await stream_reply(await self._fresh(), request)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


def read_user_line(interactive: bool) -> str | None:
    """One line from the user, or None at EOF."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


def chat(addr: str, api_key: str | None, wait: float, system: str | None, opts: dict[str, Any]) -> int:
    """The chat loop. Input is read synchronously between turns so Ctrl+C at the
    prompt needs no thread tricks; one event loop lives across turns so the
    connection (and the daemon's prompt-prefix cache) is reused."""
    base = [Message(role=Role.SYSTEM, content=system)] if system else []
    history = list(base)
    model: str | None = None  # `/model NAME`; None: the daemon's default
    interactive = sys.stdin.isatty()
    session = ChatSession(addr, api_key, wait)
    with asyncio.Runner() as runner:
        try:
            while True:
                line = read_user_line(interactive)
                if line is None:
                    break
                if not line.strip():
                    continue
                command = parse_command(line)
                if command is not None:
                    if command.name == "/exit":
                        break
                    if command.name == "/reset":
                        history = list(base)
                        err("[history cleared]")
                    elif command.name == "/model":
                        model = command.arg or model
                        err(f"[model: {model or 'the daemon default'}]")
                    else:
                        err(f"[{unknown(command)}]")
                    continue
                history.append(Message(role=Role.USER, content=prompt_text(line)))
                request = Request(id=next_id("chat"), messages=list(history), model=model, **opts)
                try:
                    turn = runner.run(session.turn(request))
                except KeyboardInterrupt:
                    # The abandoned stream dropped the connection, which stops the daemon.
                    history.pop()
                    err("\n[interrupted]")
                    continue
                except (ClientError, OSError) as exc:
                    history.pop()
                    err(f"error: {describe(exc)}")
                    continue
                if turn.error is not None:
                    history.pop()
                    report_error(turn.error)
                    continue
                assert turn.done is not None
                reply = turn.done.content or "".join(turn.text)
                history.append(Message(role=Role.ASSISTANT, content=reply))
                err(stats_line(turn))
        except KeyboardInterrupt:
            print()
            return 130
        finally:
            runner.run(session.aclose())
    return 0


async def embed(
    texts: list[str], addr: str, api_key: str | None, wait: float, dimensions: int | None, task: str | None
) -> int:
    client = await connect(EmbedClient.dial, addr, api_key, wait)
    async with client:
        response = await client.embed(
            EmbedRequest(id=next_id("embed"), input=list(texts), dimensions=dimensions, task=task)
        )
    if isinstance(response, EmbedErrorFrame):
        err(f"error: {response.code}: {response.message}")
        return EXIT_FAIL
    for index, vector in enumerate(response.embeddings):
        line = {"index": index, "dimensions": response.dimensions, "embedding": vector}
        print(json.dumps(line, separators=(",", ":")), flush=True)
    return 0


def agent_options(system: str | None, sampling_opts: dict[str, Any], as_json: bool, tools: str | None,
                  tool_choice: str | None, thinking: bool | None, schema: str | None) -> AgentOptions | None:
    """The agent flags, or None when a plain v1 run/chat does (no flag that needs more)."""
    if not (as_json or tools or tool_choice or thinking is not None or schema):
        return None
    try:
        return AgentOptions(system=system, tools=load_tools(tools) if tools else [], tool_choice=tool_choice,
                            thinking=thinking, schema=load_schema(schema) if schema else None, json=as_json,
                            sampling=sampling_opts)
    except UsageError as exc:
        die(str(exc))


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        prompt: Annotated[str, typer.Argument(help="The user message.")],
        addr: AddrOpt = None,
        system: SystemOpt = None,
        max_tokens: MaxTokensOpt = None,
        temperature: TemperatureOpt = None,
        top_p: TopPOpt = None,
        top_k: TopKOpt = None,
        seed: SeedOpt = None,
        stop: StopOpt = None,
        wait: WaitOpt = 30.0,
        api_key: ApiKeyOpt = None,
        as_json: JsonOpt = False,
        tools: ToolsOpt = None,
        tool_choice: ToolChoiceOpt = None,
        thinking: ThinkingOpt = None,
        json_schema: SchemaOpt = None,
        raw: Annotated[bool, typer.Option("--raw", help="Send PROMPT as is, with no chat template "
                                          "(what a base model continues).")] = False,
    ) -> None:
        """Send one prompt and stream the reply to stdout."""
        opts = sampling(max_tokens, temperature, top_p, top_k, seed, stop)
        if raw:
            if system or as_json or tools or tool_choice or thinking is not None or json_schema:
                die("--raw sends the prompt as is: it takes no --system, --json, --tools, --tool-choice, "
                    "--thinking or --json-schema")
            raise typer.Exit(run_async(run(prompt, addr or default_inference_addr(), api_key, wait, None, opts,
                                           raw=True)))
        agent = agent_options(system, opts, as_json, tools, tool_choice, thinking, json_schema)
        if agent is not None:
            target = addr or (default_v2_addr() if agent.needs_v2 else default_inference_addr())
            raise typer.Exit(run_async(agent_run(prompt, agent, target, api_key, wait)))
        code = run_async(run(prompt, addr or default_inference_addr(), api_key, wait, system, opts))
        raise typer.Exit(code)

    @app.command("chat")
    def chat_cmd(
        addr: AddrOpt = None,
        system: SystemOpt = None,
        max_tokens: MaxTokensOpt = None,
        temperature: TemperatureOpt = None,
        top_p: TopPOpt = None,
        top_k: TopKOpt = None,
        seed: SeedOpt = None,
        stop: StopOpt = None,
        wait: WaitOpt = 30.0,
        api_key: ApiKeyOpt = None,
        as_json: JsonOpt = False,
        tools: ToolsOpt = None,
        tool_choice: ToolChoiceOpt = None,
        thinking: ThinkingOpt = None,
        json_schema: SchemaOpt = None,
    ) -> None:
        """Chat interactively; /reset clears the history, /model NAME names the model
        requests ask for, /exit or EOF quits (`//text` sends "/text").

        With --json (or an agent flag) every stdin line is a prompt, and a line holding
        a JSON object answers the pending tool call: {"id": ..., "output": ...}."""
        opts = sampling(max_tokens, temperature, top_p, top_k, seed, stop)
        agent = agent_options(system, opts, as_json, tools, tool_choice, thinking, json_schema)
        if agent is not None:
            target = addr or (default_v2_addr() if agent.needs_v2 else default_inference_addr())
            raise typer.Exit(run_async(AgentChat(agent, target, api_key, wait).run(sys.stdin)))
        try:
            code = chat(addr or default_inference_addr(), api_key, wait, system, opts)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - same last line of defence as run_async
            die(describe(exc))
        raise typer.Exit(code)

    @app.command("embed")
    def embed_cmd(
        texts: Annotated[list[str], typer.Argument(help="Texts to embed, one vector each.")],
        addr: Annotated[
            Optional[str],
            typer.Option("--addr", envvar="INFERD_EMBED_ADDR", help="Embed socket, pipe or HOST:PORT.", show_default=False),
        ] = None,
        dimensions: Annotated[Optional[int], typer.Option("--dimensions", min=1, show_default=False)] = None,
        task: Annotated[Optional[str], typer.Option("--task", help="e.g. retrieval_query, similarity.", show_default=False)] = None,
        wait: WaitOpt = 30.0,
        api_key: ApiKeyOpt = None,
    ) -> None:
        """Embed each TEXT and print one JSON line per input."""
        code = run_async(embed(texts, addr or default_embed_addr(), api_key, wait, dimensions, task))
        raise typer.Exit(code)
