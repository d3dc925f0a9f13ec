"""`inferd run --json` and `inferd chat --json` as real processes against the real model.

The CLI runs as a subprocess (real stdin, real stdout); the daemon runs in this test's
event loop on the embedded Gemma 3 270M. Every stdout line is checked against the
shape of its event (zeph-core's JsonEvent, seed 004, plus our thinking_chunk).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import pytest
import pytest_asyncio

from daemon_harness import cleanup, short_tmpdir, start_daemon

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

# Each event's fields and their JSON types, exactly.
SHAPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "boot": {"version": str, "bare": bool, "auto": bool},
    "query": {"text": str, "queue_len": int},
    "response_chunk": {"text": str},
    "thinking_chunk": {"text": str},
    "response_end": {},
    "tool_call": {"tool": str, "args": dict, "id": str},
    "tool_result": {"tool": str, "id": str, "output": str, "is_error": bool},
    "cost": {"input_tokens": int, "output_tokens": int, "total_usd": float},
    "command_ack": {"command": str, "text": str},
    "status": {"message": str},
    "error": {"message": str},
}

TOOLS = [{"name": "get_weather", "description": "Weather for a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                           "required": ["city"]}}]


def check_shape(line: str) -> dict:
    event = json.loads(line)
    kind = event.pop("event")
    shape = SHAPES[kind]
    assert set(event) == set(shape), (kind, event)
    for key, typ in shape.items():
        assert isinstance(event[key], typ) and not (typ is int and isinstance(event[key], bool)), (kind, key, event)
    event["event"] = kind
    return event


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=2048, n_threads=2,
                                v2=True, v2_addr=str(d / "v2.sock"))
    daemon.v2 = str(d / "v2.sock")
    (d / "tools.json").write_text(json.dumps(TOOLS))
    daemon.tools = str(d / "tools.json")
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


async def cli(*args: str, stdin: bytes = b"", timeout: float = 180) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferd.cli.main", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, INFERD_LOG="warn"),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode, out.decode().splitlines(), err.decode()


async def test_chat_json_drives_a_full_tool_round_trip(daemon):
    """Prompt -> a forced tool call -> the result on stdin -> the model answers -> EOF.
    stdin is written as events arrive: the result goes in once the call is out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferd.cli.main", "chat", "--json", "--addr", daemon.v2, "--tools", daemon.tools,
        "--tool-choice", "required", "--temperature", "0", "--max-tokens", "64",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, INFERD_LOG="warn"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    events: list[dict] = []

    async def next_event() -> dict:
        line = await asyncio.wait_for(proc.stdout.readline(), 180)
        assert line, "the CLI ended early"
        events.append(check_shape(line.decode()))
        return events[-1]

    proc.stdin.write(b"What is the weather in Paris?\n")
    await proc.stdin.drain()
    while (ev := await next_event())["event"] != "tool_call":
        assert ev["event"] in ("boot", "query", "response_chunk", "status"), ev
    call = ev
    assert call["tool"] == "get_weather" and isinstance(call["args"]["city"], str)
    while (ev := await next_event())["event"] == "status":
        pass  # which backend served the turn, how full the context is
    assert ev["event"] == "response_end"
    assert (await next_event())["event"] == "cost"
    proc.stdin.write(json.dumps({"output": {"temp_c": 21, "sky": "sunny"}}).encode() + b"\n")
    await proc.stdin.drain()
    result = await next_event()
    assert result == {"event": "tool_result", "tool": "get_weather", "id": call["id"],
                      "output": '{"temp_c": 21, "sky": "sunny"}', "is_error": False}
    while (ev := await next_event())["event"] != "cost":
        assert ev["event"] in ("response_chunk", "thinking_chunk", "response_end", "tool_call", "status"), ev
    assert ev["input_tokens"] > 0 and ev["output_tokens"] > 0 and ev["total_usd"] == 0.0
    proc.stdin.close()
    rest = await asyncio.wait_for(proc.stdout.read(), 60)
    for line in rest.decode().splitlines():
        events.append(check_shape(line))
    code = await proc.wait()
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["boot", "query"] and kinds.count("tool_result") == 1
    # The continuation ran with tool_choice auto; if the model called again, EOF with a
    # call pending is an error (exit 1) - otherwise a clean exit.
    if kinds[-1] == "error":
        assert code == 1 and "pending" in events[-1]["message"]
    else:
        assert code == 0 and kinds[-2:] == ["response_end", "cost"]


async def test_run_json_streams_chunks_then_end_and_cost(daemon):
    code, lines, err = await cli("run", "--json", "--addr", daemon.infer, "Once upon a time",
                                 "--temperature", "0", "--max-tokens", "8")
    assert code == 0, err
    events = [check_shape(line) for line in lines]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "boot" and kinds[1] == "query" and kinds[-2:] == ["response_end", "cost"]
    assert set(kinds[2:-2]) == {"response_chunk", "status"}
    assert events[1] == {"event": "query", "text": "Once upon a time", "queue_len": 0}
    assert events[-1]["output_tokens"] == 8
    # The reply reached --max-tokens: the adapter's Info, as a status line after the text.
    notes = [e["message"] for e in events if e["event"] == "status" and e["message"].startswith("note: ")]
    assert notes == ["note: the reply was cut off at max_tokens (8)"]
    assert kinds.index("status", kinds.index("response_chunk")) > max(
        i for i, k in enumerate(kinds) if k == "response_chunk")


async def test_run_json_schema_output_parses(daemon):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    path = os.path.join(os.path.dirname(daemon.tools), "schema.json")
    with open(path, "w") as f:
        json.dump(schema, f)
    code, lines, err = await cli("run", "--json", "--addr", daemon.infer, '{"ok": true}', "--json-schema", path,
                                 "--temperature", "0", "--max-tokens", "40")
    assert code == 0, err
    text = "".join(e["text"] for e in map(check_shape, lines) if e["event"] == "response_chunk")
    assert isinstance(json.loads(text)["ok"], bool)


async def test_run_json_errors_are_an_event_and_a_failing_exit(daemon):
    code, lines, _ = await cli("run", "--json", "--addr", daemon.v2, "hi", "--tools", daemon.tools,
                               "--tool-choice", "sometimes")
    assert code == 1
    last = check_shape(lines[-1])
    assert last["event"] == "error" and "tool_choice" in last["message"]
    code, lines, _ = await cli("run", "--json", "--addr", daemon.v2 + ".absent", "hi", "--tools", daemon.tools,
                               "--wait", "0")
    assert code == 1 and check_shape(lines[-1])["event"] == "error"


async def test_chat_json_one_turn_between_slash_commands_end_to_end(daemon):
    """The event stream of one real turn: /reset and /exit acknowledged around it, the
    query with its queue length, the reply, a status line saying which backend served
    it and how full the context is, the end and the cost."""
    code, lines, err = await cli("chat", "--json", "--addr", daemon.infer, "--temperature", "0", "--max-tokens", "6",
                                 stdin=b"/reset\nSay hello.\n/exit\nnever sent\n")
    assert code == 0, err
    events = [check_shape(line) for line in lines]
    kinds = [e["event"] for e in events]
    assert events[:3] == [
        {"event": "boot", "version": events[0]["version"], "bare": True, "auto": False},
        {"event": "command_ack", "command": "/reset", "text": "history cleared"},
        {"event": "query", "text": "Say hello.", "queue_len": 0},
    ]
    assert events[-1] == {"event": "command_ack", "command": "/exit", "text": "bye"}
    assert kinds[-3:-1] == ["response_end", "cost"] and events[-2]["output_tokens"] > 0
    middle = kinds[3:-3]
    assert set(middle) <= {"status", "response_chunk"} and "response_chunk" in middle
    statuses = [e["message"] for e in events if e["event"] == "status"]
    assert any(re.fullmatch(r"default model on llamacpp: context \d+/2048 tokens \([\d.]+%\)", m) for m in statuses), \
        statuses
    assert "never sent" not in "".join(lines)
