"""`inferd run/chat --json` (seed 004), issue 22: status lines from progress frames, the
real queue_len, and the slash commands with command_ack.

A fake daemon on a real Unix socket replays the frames a daemon sends with
`progress: true` (exact event lists); the /reset test drives the CLI in a subprocess
against a real mock daemon from the harness and checks what the backend was asked.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from typer.testing import CliRunner

from inferd.cli.main import app
from inferd.cli.slash import Command, parse_command, prompt_text

runner = CliRunner()


def frame(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class ProgressDaemon:
    """Answers every request as a daemon with two requests ahead of it would, when the
    request asked for progress; records the requests it reads."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def __call__(self, rfile, wfile) -> None:
        for raw in rfile:
            req = json.loads(raw)
            self.requests.append(req)
            rid = req["id"]
            if req.get("progress"):
                for extra in ({"stage": "queued", "position": 2}, {"stage": "queued", "position": 1},
                              {"stage": "prefill", "done": 3, "total": 3},
                              {"stage": "context", "context": {"used": 3, "max": 512}}):
                    wfile.write(frame({"type": "progress", "id": rid, **extra}))
            wfile.write(frame({"type": "token", "id": rid, "content": "Hi"}))
            wfile.write(frame({"type": "done", "id": rid, "content": "Hi", "stop_reason": "end", "backend": "fake",
                               "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                               "context": {"used": 5, "max": 512}}))


def events_of(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_run_json_shows_the_wait_as_status_lines_and_the_real_queue_len(fake_server):
    daemon = ProgressDaemon()
    server = fake_server(daemon)
    result = runner.invoke(app, ["run", "--json", "--addr", server.path, "hi"])
    assert result.exit_code == 0, result.output
    events = events_of(result.stdout)
    assert events == [
        {"event": "boot", "version": events[0]["version"], "bare": True, "auto": False},
        {"event": "query", "text": "hi", "queue_len": 2},
        {"event": "status", "message": "queued (position 2)"},
        {"event": "status", "message": "queued (position 1)"},
        {"event": "status", "message": "reading the prompt (3/3 tokens)"},
        {"event": "status", "message": "default model: context 3/512 tokens (0.6%)"},
        {"event": "response_chunk", "text": "Hi"},
        {"event": "status", "message": "default model on fake: context 5/512 tokens (1%)"},
        {"event": "response_end"},
        {"event": "cost", "input_tokens": 3, "output_tokens": 2, "total_usd": 0.0},
    ]
    assert daemon.requests[0]["progress"] is True


def test_run_without_json_asks_for_no_progress(fake_server):
    daemon = ProgressDaemon()
    server = fake_server(daemon)
    result = runner.invoke(app, ["run", "--addr", server.path, "hi"])
    assert result.exit_code == 0 and result.stdout == "Hi\n"
    assert "progress" not in daemon.requests[0]


def test_chat_json_model_command_names_the_model_of_later_requests(fake_server):
    daemon = ProgressDaemon()
    server = fake_server(daemon)
    stdin = "first\n/model small-model\n/model\nsecond\n/frobnicate\n//slash is a prompt\n"
    result = runner.invoke(app, ["chat", "--json", "--addr", server.path], input=stdin)
    assert result.exit_code == 0, result.output
    acks = [e for e in events_of(result.stdout) if e["event"] == "command_ack"]
    assert acks == [
        {"event": "command_ack", "command": "/model", "text": "requests now name model small-model"},
        {"event": "command_ack", "command": "/model", "text": "model: small-model"},
        {"event": "command_ack", "command": "/frobnicate",
         "text": "unknown command /frobnicate; the commands are /reset, /exit, /model NAME"},
    ]
    assert [r.get("model") for r in daemon.requests] == [None, "small-model", "small-model"]
    assert daemon.requests[2]["messages"][-1] == {"role": "user", "content": "/slash is a prompt"}
    statuses = [e["message"] for e in events_of(result.stdout) if e["event"] == "status"]
    assert "model small-model on fake: context 5/512 tokens (1%)" in statuses


def test_the_text_chat_takes_model_too(fake_server):
    daemon = ProgressDaemon()
    server = fake_server(daemon)
    result = runner.invoke(app, ["chat", "--addr", server.path], input="/model m2\nhello\n/exit\nnot sent\n")
    assert result.exit_code == 0, result.output
    assert [(r.get("model"), r["messages"][-1]["content"]) for r in daemon.requests] == [("m2", "hello")]


def test_what_counts_as_a_slash_command():
    assert parse_command("/reset") == Command("/reset")
    assert parse_command("  /model  gemma-3:1b \n") == Command("/model", "gemma-3:1b")
    assert parse_command("/usr/bin/env?") is None and parse_command("//reset") is None
    assert parse_command("hello /reset") is None and parse_command("/Reset") is None
    assert prompt_text("//reset") == "/reset" and prompt_text("/usr/bin") == "/usr/bin"


# ---- against a real (mock) daemon ----------------------------------------------------------


async def test_chat_json_reset_acknowledges_and_starts_a_fresh_history(daemon_factory, monkeypatch):
    d = await daemon_factory(mock={"tokens": ["Hello", "!"]})
    backend = d.server.router.entries[0].backend
    real = backend._stream
    asked: list[list[tuple[str, str]]] = []

    async def recording(request):
        asked.append([(m.role, m.content) for m in request.messages])
        async for event in real(request):
            yield event

    monkeypatch.setattr(backend, "_stream", recording)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferd.cli.main", "chat", "--json", "--addr", d.infer, "--system", "Be brief.",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, INFERD_LOG="warn"),
    )
    out, err = await asyncio.wait_for(proc.communicate(b"first question\n/reset\nsecond question\n/exit\n"), 60)
    assert proc.returncode == 0, err.decode()
    events = events_of(out.decode())
    turn = [{"event": "response_chunk", "text": "Hello"}, {"event": "response_chunk", "text": "!"},
            {"event": "response_end"}, {"event": "cost", "input_tokens": 0, "output_tokens": 2, "total_usd": 0.0}]
    # Status lines (which backend served, progress) are checked apart: their number is
    # the daemon's to decide.
    assert [e for e in events if e["event"] != "status"] == [
        {"event": "boot", "version": events[0]["version"], "bare": False, "auto": False},
        {"event": "query", "text": "first question", "queue_len": 0},
        *turn,
        {"event": "command_ack", "command": "/reset", "text": "history cleared"},
        {"event": "query", "text": "second question", "queue_len": 0},
        *turn,
        {"event": "command_ack", "command": "/exit", "text": "bye"},
    ]
    assert [e["message"] for e in events if e["event"] == "status"][-1] == "default model on mock"
    # After /reset the model saw the system prompt and the new question only.
    assert asked == [
        [("system", "Be brief."), ("user", "first question")],
        [("system", "Be brief."), ("user", "second question")],
    ]
