"""THREAT_MODEL F-11 (ADR 0032) on the real Gemma 3 270M over HTTP: a grammar's cost is
bounded per request, not per byte.

`root ::= "zq"? "zq"? ... "\\x01"` passes the byte and alternation limits yet makes each
constrained token a full-vocabulary pass per parse stack (about K+1 stacks; seconds per
token at K = 1,000 on a 262k vocabulary). These tests pin that such a grammar (sent as
`grammar`, or reached through a `response_format` or tool schema):

- never holds another client's stream: the others keep decoding while its pass runs
  on the scheduler's grammar thread;
- ends with a clear `invalid_request` once one token's pass exceeds its CPU budget;
- frees its slot (and the gauges agree) within a bound after its client leaves, even
  with a pass still running;
- is refused before it runs when its estimated stacks exceed MAX_GRAMMAR_STACKS,
  whichever way it came; legitimate schemas still pass.

One in-process daemon (two slots, runner process as by default) for the module.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import pytest_asyncio

from daemon_harness import cleanup, short_tmpdir, start_daemon, wait_until
from http_helpers import base_url, host_port, raw_request

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Another stream's largest token gap allowed beside a costly grammar. Alone a token
#: takes tens of ms; before ADR 0032 every token waited for the grammar's pass
#: (seconds at COSTLY), so this is generous against a loaded machine and still far
#: below what it catches.
GAP_BOUND_S = 1.0
#: How soon a cancelled grammar request must leave its slot (before: after its pass).
CANCEL_BOUND_S = 1.0

#: Just under MAX_GRAMMAR_STACKS: accepted, and each constrained token costs seconds.
COSTLY = 1000
#: Over MAX_GRAMMAR_STACKS: refused up front.
TOO_MANY = 1100


def optionals(k: int) -> str:
    return "root ::= " + " ".join(['"zq"?'] * k) + ' "\\x01"\n'


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=1024, n_threads=2,
                                parallel=2, http="127.0.0.1:0")
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


@pytest.fixture
def base(daemon) -> str:
    return base_url(daemon)


def sequences(daemon) -> list:
    return daemon.server.router.entries[0].backend.running_sequences()


async def running_gauge(base: str) -> float:
    async with httpx.AsyncClient() as h:
        text = (await h.get(base + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("inferd_requests_running{"))


async def stream_gaps(base: str, max_tokens: int) -> tuple[float, float, int]:
    """Stream a plain completion: (its first token's time, largest gap between tokens, tokens)."""
    body = {"prompt": "The history of the printing press", "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    stamps: list[float] = []
    async with httpx.AsyncClient(timeout=120) as h:
        async with h.stream("POST", base + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    stamps.append(time.monotonic())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return stamps[0], max(gaps), len(stamps)


async def test_a_costly_grammar_never_stalls_another_stream_and_ends_with_a_clear_error(daemon, base):
    async with httpx.AsyncClient(timeout=300) as h:
        hostile = asyncio.ensure_future(h.post(base + "/v1/completions", json={
            "prompt": "Say something.", "grammar": optionals(COSTLY), "max_tokens": 8}))
        await wait_until(lambda: any(s.state == "decode" for s in sequences(daemon)) or hostile.done(), 60,
                         "the grammar request to decode")
        first, gap, tokens = await stream_gaps(base, 24)
        r = await hostile
        ended = time.monotonic()
    # The other stream ran beside the grammar, not after it.
    assert first < ended and tokens >= 10
    assert gap < GAP_BOUND_S, f"another stream waited {gap:.2f} s for a grammar's pass"
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "grammar too costly" in err["message"] and "GRAMMAR_TOKEN_CPU_S" in err["message"]


async def test_a_cancelled_grammar_request_leaves_its_slot_at_once(daemon, base):
    host, port = host_port(daemon)
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"prompt": "Say something.", "grammar": optionals(COSTLY), "max_tokens": 8,
                       "stream": True}).encode()
    writer.write(raw_request("POST", "/v1/completions", body))
    # No head yet: the surface answers once the first token (or an error) is known.
    await wait_until(lambda: any(s.state == "decode" for s in sequences(daemon)), 60, "the grammar request to decode")
    assert await running_gauge(base) == 1
    writer.close()
    left = time.monotonic()
    # Until the slot is free the gauge must not say 0: the two agree.
    while sequences(daemon):
        assert time.monotonic() - left < CANCEL_BOUND_S, "the cancelled grammar request still holds its slot"
        await asyncio.sleep(0.01)
    freed = time.monotonic() - left
    await wait_until(lambda: daemon.server.router.outstanding == 0, CANCEL_BOUND_S, "the run permit to be released")
    assert freed < CANCEL_BOUND_S
    # The slot serves again at once.
    _, _, tokens = await stream_gaps(base, 4)
    assert tokens >= 1


def _pattern_schema(k: int) -> dict:
    return {"type": "object", "properties": {"s": {"type": "string", "pattern": "^" + "a?" * k + "$"}},
            "required": ["s"]}


@pytest.mark.parametrize("how", ["grammar", "response_format", "tool"])
async def test_a_stack_multiplying_grammar_is_refused_up_front(base, how):
    if how == "grammar":
        path, body = "/v1/completions", {"prompt": "x", "grammar": optionals(TOO_MANY), "max_tokens": 4}
    elif how == "response_format":
        path, body = "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "s", "schema": _pattern_schema(TOO_MANY)}}}
    else:
        path, body = "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": _pattern_schema(TOO_MANY)}}]}
    async with httpx.AsyncClient(timeout=60) as h:
        r = await h.post(base + path, json=body)
    assert r.status_code == 400, r.text
    assert "MAX_GRAMMAR_STACKS" in r.json()["error"]["message"]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
ORDER = {"type": "object", "properties": {
    "customer": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                                                  "address": {"type": "object", "properties": {
                                                      "street": {"type": "string"}, "zip": {"type": "string"}}}}},
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "sku": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"},
        "size": {"enum": ["S", "M", "L", "XL"]}}, "required": ["sku"]}},
    "status": {"enum": ["new", "paid", "shipped", "cancelled"]}, "note": {"type": "string"}},
    "required": ["customer"]}


async def test_legitimate_schemas_still_pass(base):
    async with httpx.AsyncClient(timeout=120) as h:
        r = await h.post(base + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "An order, please."}], "max_tokens": 8, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}})
        assert r.status_code == 200, r.text
        r = await h.post(base + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 60, "temperature": 0,
            "tools": [WEATHER], "tool_choice": "required"})
        assert r.status_code == 200, r.text
