"""SIGTERM and SIGHUP while HTTP streams are open (issue 19, the round's last bullet):
a stream finishes, or ends with an error event, and the daemon exits or reloads
cleanly. Real signals to this process, the daemon's handlers installed; generations
are held at a gate so the order is the test's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx

from daemon_harness import wait_until, watch_mock
from http_helpers import base_url

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 8}


async def open_stream(client: httpx.AsyncClient) -> tuple[httpx.Response, asyncio.Task]:
    """A streamed chat whose events are gathered by a task: (response, task -> events)."""
    response = await client.send(client.build_request("POST", "/v1/chat/completions", json=CHAT), stream=True)
    assert response.status_code == 200

    async def events() -> list[str]:
        out = []
        try:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    out.append(line[len("data: "):])
        except httpx.HTTPError as exc:
            out.append(f"transport error: {type(exc).__name__}")
        return out

    return response, asyncio.create_task(events())


def text_of(events: list[str]) -> str:
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events if e.startswith("{") and "choices" in e)


async def test_sigterm_lets_an_open_stream_finish_then_exits(http_daemon, monkeypatch):
    d = await http_daemon(install_signals=True, mock={"tokens": ["a"] * 8}, drain_timeout_secs=30)
    mock = watch_mock(d, monkeypatch, hold_at=2)
    async with httpx.AsyncClient(base_url=base_url(d), timeout=30) as c:
        _, events = await open_stream(c)
        await wait_until(lambda: len(mock.started) == 1, 10, "the generation to start")
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: d.server.broadcaster.snapshot.status == "draining", 10, "the drain")
        mock.gate.set()
        got = await asyncio.wait_for(events, 20)
    assert got[-1] == "[DONE]" and text_of(got) == "a" * 8
    assert await asyncio.wait_for(d.task, 20) == 0


async def test_sigterm_past_the_drain_deadline_ends_the_stream_with_an_error(http_daemon, monkeypatch):
    d = await http_daemon(install_signals=True, mock={"tokens": ["a"] * 8}, drain_timeout_secs=0.3)
    mock = watch_mock(d, monkeypatch, hold_at=2)  # never released
    async with httpx.AsyncClient(base_url=base_url(d), timeout=30) as c:
        _, events = await open_stream(c)
        await wait_until(lambda: len(mock.started) == 1, 10, "the generation to start")
        os.kill(os.getpid(), signal.SIGTERM)
        got = await asyncio.wait_for(events, 20)
    assert "[DONE]" not in got
    error = json.loads(got[-1])["error"]
    assert "shutting down" in error["message"], got
    assert await asyncio.wait_for(d.task, 20) == 0


async def test_sighup_with_an_open_stream_reloads_and_serves_again(http_daemon, monkeypatch):
    """The stream that finishes within the drain deadline ends with [DONE]; one past it
    (here: a second stream that never gets its gate) ends with an error event; the
    reload completes and the same port answers."""
    d = await http_daemon(install_signals=True, mock={"tokens": ["a"] * 8}, drain_timeout_secs=0.5)
    mock = watch_mock(d, monkeypatch, hold_at=2)
    async with httpx.AsyncClient(base_url=base_url(d), timeout=30) as c:
        _, events = await open_stream(c)
        await wait_until(lambda: len(mock.started) == 1, 10, "the generation to start")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: d.server.broadcaster.snapshot.status == "restarting", 10, "the reload")
        got = await asyncio.wait_for(events, 20)
        assert "[DONE]" not in got and "reloaded" in json.loads(got[-1])["error"]["message"]
        await wait_until(lambda: d.server.broadcaster.snapshot.status == "ready", 20, "the reload's end")
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "a" * 8
    assert not d.task.done()
