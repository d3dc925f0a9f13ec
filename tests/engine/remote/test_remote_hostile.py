"""A remote `openai` backend that misbehaves (issue 19, THREAT_MODEL F-23): each
misbehaviour ends the request it hits - with an Unavailable that says what happened -
while a well-behaved request on the same backend, at the same time, completes; and
memory stays bounded whatever the remote sends.

The remote is fake_openai.py on 127.0.0.1. Each test says how the code before issue 19
(1f4ee46) failed it, or that it held already.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from fake_openai import Exchange, FakeRemote, chunk
from loop_clock import on_virtual_time
from inferd.engine.backend import Unavailable
from inferd.engine.events import Done, TextDelta
from inferd.engine.remote import OpenAIBackend, OpenAISettings
from inferd.engine.remote.openai import MAX_STREAM_BYTES, chunk_budget
from inferd.engine.request import ChatMessage, GenerationRequest

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def request(content: str, max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest(id=content, messages=[ChatMessage("user", content)], max_tokens=max_tokens)


async def until_closed(ex: Exchange, send) -> None:
    """Call `send()` until the client closes (a write fails) - an endless remote."""
    try:
        while True:
            await send()
    except (ConnectionError, OSError):
        pass


def routed(evil):
    """The fake's handler: `evil` for the request that says "evil", a good answer otherwise."""
    async def handler(ex: Exchange) -> None:
        if ex.request.body["messages"][-1]["content"] == "evil":
            await evil(ex)
            return
        await ex.start_sse()
        await ex.send(chunk("fine"))
        await ex.send(chunk(finish="stop"))
        await ex.send("[DONE]")
    return handler


async def evil_and_good(fake: FakeRemote, max_tokens: int = 16, **settings) -> tuple[BaseException, list]:
    """Run the evil request and a good one at once on one backend: what ended the evil
    one, and the good one's events."""
    settings.setdefault("idle_timeout", 0.5)
    settings.setdefault("first_token_timeout", 2.0)
    backend = OpenAIBackend(OpenAISettings(base_url=fake.url, max_concurrency=2, **settings))
    try:
        await backend.probe()

        async def run(content: str) -> list:
            return [e async for e in await backend.generate(request(content, max_tokens))]

        evil, good = await asyncio.gather(run("evil"), run("good"), return_exceptions=True)
        assert isinstance(good, list), good
        assert isinstance(evil, BaseException), f"the evil request ended cleanly: {evil!r}"
        return evil, good
    finally:
        await backend.stop(1.0)


def fine(events: list) -> bool:
    return events[0] == TextDelta("fine") and isinstance(events[-1], Done)


async def test_an_endless_stream_ends_past_what_max_tokens_explains():
    """Chunks for ever, each within the idle timeout. Old code: relayed for ever (and a
    v1 sink kept every piece for its `done` frame)."""
    async def endless(ex: Exchange) -> None:
        await ex.start_sse()
        await until_closed(ex, lambda: ex.send(chunk("x")))
    async with FakeRemote(routed(endless)) as fake:
        evil, good = await evil_and_good(fake, max_tokens=8)
    assert isinstance(evil, Unavailable) and "endless" in str(evil) and str(chunk_budget(8)) in str(evil)
    assert fine(good)


async def test_keep_alive_objects_for_ever_end_too():
    """Chunks that carry nothing (an empty delta) reset no deadline of their own once
    output flows; the chunk budget ends them. Old code: for ever."""
    async def empty(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.send(chunk("x"))
        await until_closed(ex, lambda: ex.send(chunk()))
    async with FakeRemote(routed(empty)) as fake:
        evil, good = await evil_and_good(fake, max_tokens=4)
    assert isinstance(evil, Unavailable) and "endless" in str(evil)
    assert fine(good)


async def test_a_1_gb_line_costs_at_most_the_event_bound():
    """`data: ` and then a gigabyte without a newline. Held already (sse.py's 8 MiB line
    bound); pinned with memory measured."""
    piece = b"a" * MIB

    async def huge(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.raw(b"data: ")
        sent = 0
        try:
            while sent < 1024:
                await ex.raw(piece)
                sent += 1
        except (ConnectionError, OSError):
            pass
    before = rss_bytes()
    async with FakeRemote(routed(huge)) as fake:
        evil, good = await evil_and_good(fake)
    assert isinstance(evil, Unavailable) and "line longer" in str(evil)
    assert fine(good)
    assert rss_bytes() - before < 96 * MIB


async def test_100_mb_of_tool_call_arguments_end_the_request_at_8_mib():
    """A tool call whose arguments come in 1 MiB pieces, 100 of them. Old code: kept all
    100 MiB, joined them (another 100) and parsed them on the event loop."""
    piece = "a" * MIB

    async def arguments(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.send(chunk(tool_calls=[{"index": 0, "id": "c1", "type": "function",
                                         "function": {"name": "f", "arguments": ""}}]))
        try:
            for _ in range(100):
                await ex.send(chunk(tool_calls=[{"index": 0, "function": {"arguments": piece}}]))
        except (ConnectionError, OSError):
            pass
    before = rss_bytes()
    async with FakeRemote(routed(arguments)) as fake:
        evil, good = await evil_and_good(fake, max_tokens=4096)
    assert isinstance(evil, Unavailable) and "MAX_TOOL_ARGUMENT_CHARS" in str(evil)
    assert fine(good)
    assert rss_bytes() - before < 64 * MIB


async def test_a_stream_past_the_frame_cap_ends():
    """Text chunks of 4 MiB each (below the event bound), more than a reply can carry:
    the stream ends at MAX_STREAM_BYTES. Old code: relayed without a bound."""
    piece = "t" * (4 * MIB)

    async def big(ex: Exchange) -> None:
        await ex.start_sse()
        await until_closed(ex, lambda: ex.send(chunk(piece)))
    async with FakeRemote(routed(big)) as fake:
        evil, good = await evil_and_good(fake, max_tokens=4096)
    assert isinstance(evil, Unavailable) and str(MAX_STREAM_BYTES) in str(evil)
    assert fine(good)


@on_virtual_time
async def test_a_slow_drip_ends_at_the_idle_timeout():
    """One chunk, then the next event a byte every 0.1 s: no event completes within the
    idle timeout (0.5 s), whatever the bytes. Held already; pinned on the driven clock."""
    async def drip(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.send(chunk("one"))

        async def byte() -> None:
            await ex.raw(b"d")
            await asyncio.sleep(0.1)
        await until_closed(ex, byte)
    async with FakeRemote(routed(drip)) as fake:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        evil, good = await evil_and_good(fake)
    assert isinstance(evil, Unavailable) and "stalled" in str(evil)
    assert fine(good)
    assert loop.time() - t0 < 1.0


@on_virtual_time
async def test_headers_then_nothing_end_at_the_first_token_timeout():
    """A JSON answer's headers (Content-Length 100) and then silence. Held already."""
    async def hang(ex: Exchange) -> None:
        await ex.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        await ex.wait_closed_by_peer()
    async with FakeRemote(routed(hang)) as fake:
        evil, good = await evil_and_good(fake, first_token_timeout=1.5)
    assert isinstance(evil, Unavailable) and "not complete within 1.5 s" in str(evil)
    assert fine(good)


async def test_a_redirect_to_another_host_is_not_followed():
    """307 to another server: nothing is sent there (the key would go with it) and the
    error says where the remote pointed. Old code: not followed either, but the error
    said only "HTTP 307 ... no message"."""
    async with FakeRemote() as elsewhere:
        async def redirect(ex: Exchange) -> None:
            body = json.dumps({"error": {"message": "moved"}}).encode()
            await ex.raw(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:%d/v1/chat/completions\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (elsewhere.port, len(body), body))
        async with FakeRemote(routed(redirect)) as fake:
            evil, good = await evil_and_good(fake)
    assert isinstance(evil, Unavailable)
    assert f"redirects to 127.0.0.1:{elsewhere.port}" in str(evil) and "not followed" in str(evil)
    assert elsewhere.seen == []
    assert fine(good)
