"""The official `openai` SDK (sync and async) against `inferd serve --http` on the real
Gemma 3 270M: chat (whole and streamed), a forced tool call and its round trip,
response_format validated against its schema, raw completions, embeddings, models,
a wrong key, a full queue, and a disconnect that stops the generation. /metrics is
checked against the usage the SDK reported.

One in-process daemon for the module; the sync client runs in a worker thread (the
daemon runs on this test's event loop). The embedded model is a base model: the tests
use greedy decoding (temperature 0) and grammars where a chat model would choose.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import jsonschema
import openai
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from daemon_harness import wait_until
from http_helpers import GenerationSpy, host_port, http_address, raw_request, read_head
from daemon_harness import cleanup, short_tmpdir, start_daemon

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "sdk-test-key"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 20}}, "required": ["tz"]}}}
USER = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=2048, n_threads=2,
                                llamacpp_embed=True, http="127.0.0.1:0", api_key=KEY,
                                active_permits=1, queue_depth=0)
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


@pytest.fixture
def base(daemon) -> str:
    return f"http://{http_address(daemon)}/v1"


@pytest.fixture
def model_name(daemon) -> str:
    return daemon.server.router.entries[0].caps.model


def sync_client(base: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=kw.pop("api_key", KEY), **kw)


def async_client(base: str, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base, api_key=kw.pop("api_key", KEY), **kw)


async def test_sync_chat_whole_and_streamed_agree(base, model_name):
    def run() -> tuple[object, list[object]]:
        with sync_client(base) as client:
            whole = client.chat.completions.create(model="llamacpp", messages=USER, max_tokens=24, temperature=0)
            chunks = list(client.chat.completions.create(model="llamacpp", messages=USER, max_tokens=24,
                                                         temperature=0, stream=True,
                                                         stream_options={"include_usage": True}))
            return whole, chunks

    whole, chunks = await asyncio.to_thread(run)
    choice = whole.choices[0]
    assert whole.model == model_name and whole.object == "chat.completion"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < whole.usage.completion_tokens <= 24 and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # greedy: the same answer either way
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # How much of the prompt the KV cache held is the engine's policy; the mapping is
    # pinned on the mock (test_http_surface.py) and against /metrics below.
    assert 0 <= chunks[-1].usage.prompt_tokens_details.cached_tokens <= chunks[-1].usage.prompt_tokens


async def test_async_chat_whole_and_streamed(base, model_name):
    async with async_client(base) as client:
        whole = await client.chat.completions.create(model="llamacpp", messages=USER, max_completion_tokens=12,
                                                     temperature=0)
        stream = await client.chat.completions.create(model="llamacpp", messages=USER, max_completion_tokens=12,
                                                      temperature=0, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream]
    assert whole.model == model_name
    assert "".join(parts) == whole.choices[0].message.content


async def test_forced_tool_call_round_trip(base):
    """tool_choice "required" (a named function is test_streamed_tool_call_delta's)."""
    async with async_client(base) as client:
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = await client.chat.completions.create(model="llamacpp", messages=messages, tools=[WEATHER, TIME],
                                                     tool_choice="required", temperature=0, max_tokens=64)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)
        assert call.id and call.type == "function"
        # The round trip: the call and its result go back; a grammar writes the answer
        # a chat model would (the embedded model is a base model).
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21, "sky": "sunny"}'}]
        second = await client.chat.completions.create(
            model="llamacpp", messages=messages, tools=[WEATHER, TIME], temperature=0, max_tokens=32,
            extra_body={"grammar": 'root ::= "It is sunny in Paris."'})
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls


async def test_streamed_tool_call_delta(base):
    """The arguments stream in pieces, in OpenAI's shape (the first delta names the call,
    the next carry only its index and a piece), and the SDK's own accumulation of the
    stream rebuilds the call a request without `stream` gets."""
    request = dict(model="llamacpp", messages=[{"role": "user", "content": "Time in UTC?"}], tools=[WEATHER, TIME],
                   tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0, max_tokens=64)
    async with async_client(base) as client:
        whole = await client.chat.completions.create(**request)
        async with client.chat.completions.stream(**request) as stream:
            chunks = [event.chunk async for event in stream if event.type == "chunk"]
            streamed = await stream.get_final_completion()
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) > 1
    head, rest = deltas[0], deltas[1:]
    assert head.index == 0 and head.id and head.type == "function" and head.function.name == "get_time"
    assert all(d.index == 0 and d.id is None and d.function.name is None and d.function.arguments for d in rest)
    (expected,) = whole.choices[0].message.tool_calls
    (got,) = streamed.choices[0].message.tool_calls
    assert (got.id, got.function.name) == (head.id, "get_time")
    assert got.function.arguments == expected.function.arguments
    jsonschema.validate(json.loads(got.function.arguments), TIME["function"]["parameters"])
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason == "tool_calls"


async def test_response_format_json_schema_validates(base):
    schema = {"type": "object",
              "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
              "required": ["name", "age"]}
    async with async_client(base) as client:
        r = await client.chat.completions.create(
            model="llamacpp", messages=[{"role": "user", "content": "A person:"}], temperature=0, max_tokens=80,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema,
                                                                    "strict": True}})
        obj = await client.chat.completions.create(
            model="llamacpp", messages=[{"role": "user", "content": '{"ok": true}'}], temperature=0, max_tokens=200,
            response_format={"type": "json_object"})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


async def test_raw_completions_sync_and_streamed(base, model_name):
    def run() -> tuple[object, str]:
        with sync_client(base) as client:
            whole = client.completions.create(model="llamacpp", prompt="The sea is", max_tokens=12, temperature=0)
            streamed = "".join(c.choices[0].text for c in client.completions.create(
                model="llamacpp", prompt="The sea is", max_tokens=12, temperature=0, stream=True))
            return whole, streamed

    whole, streamed = await asyncio.to_thread(run)
    assert whole.object == "text_completion" and whole.model == model_name
    assert whole.choices[0].text and whole.choices[0].text == streamed
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    # No chat template: the prompt is the model's input as is (2 tokens + BOS).
    assert whole.usage.prompt_tokens <= 5


async def test_embeddings_unit_norm_and_dimensions(base, daemon):
    def run() -> tuple[object, object, object]:
        with sync_client(base) as client:  # the SDK asks for base64 and decodes it
            return (client.embeddings.create(model="llamacpp", input=["a cat", "a kitten"]),
                    client.embeddings.create(model="llamacpp", input="a dog", dimensions=64),
                    client.embeddings.create(model="llamacpp", input="a cat"))

    full, short, single = await asyncio.to_thread(run)
    n_embd = daemon.server.router.entries[0].backend.n_embd
    assert [len(e.embedding) for e in full.data] == [n_embd, n_embd]
    assert len(short.data[0].embedding) == 64
    for vec in (full.data[0].embedding, full.data[1].embedding, short.data[0].embedding):
        assert math.sqrt(sum(x * x for x in vec)) == pytest.approx(1.0, abs=1e-4)
    assert full.usage.prompt_tokens > 0
    async with async_client(base) as client:
        floats = await client.embeddings.create(model="llamacpp", input=["a cat"], encoding_format="float")
    # The same vector either way (base64 carries float32: equal to ~1e-7).
    assert floats.data[0].embedding == pytest.approx(single.data[0].embedding, abs=1e-6)


async def test_models_list(base, model_name):
    def run() -> list[str]:
        with sync_client(base) as client:
            return [m.id for m in client.models.list()]

    # Every configured model by the name a request gives (issue 20); the name the model
    # reports (the id before names existed) is one of its aliases.
    assert await asyncio.to_thread(run) == ["llamacpp"]
    async with async_client(base) as client:
        assert (await client.models.retrieve(model_name)).id == "llamacpp"


async def test_wrong_key_is_authentication_error(base):
    def run() -> None:
        with sync_client(base, api_key="wrong", max_retries=0) as client:
            client.chat.completions.create(model="llamacpp", messages=USER, max_tokens=1)

    with pytest.raises(openai.AuthenticationError):
        await asyncio.to_thread(run)
    async with async_client(base, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


async def test_full_queue_is_rate_limit_error(base, daemon):
    """One permit, no queue: while a stream holds the slot, the next request is a 429
    (RateLimitError, Retry-After: 1); closing the stream frees the slot."""
    async with async_client(base) as holder, async_client(base, max_retries=0) as other:
        stream = await holder.chat.completions.create(model="llamacpp", messages=USER, max_tokens=1500, stream=True)
        await stream.__anext__()
        with pytest.raises(openai.RateLimitError) as info:
            await other.chat.completions.create(model="llamacpp", messages=USER, max_tokens=1)
        assert info.value.response.headers["retry-after"] == "1" and info.value.code == "queue_full"
        await stream.close()
        await wait_until(lambda: daemon.server.router.outstanding == 0, 30, "the slot to be released")
        r = await other.chat.completions.create(model="llamacpp", messages=USER, max_tokens=1)
        assert r.usage.completion_tokens == 1


async def test_disconnect_mid_stream_stops_the_generation(daemon):
    """Raw HTTP: the client leaves after the first chunk of a 1,500-token request; the
    engine stream is closed after a few tokens and the model is free at once."""
    backend = daemon.server.router.entries[0].backend
    spy = GenerationSpy(backend)
    try:
        host, port = host_port(daemon)
        reader, writer = await asyncio.open_connection(host, port)
        body = json.dumps({"model": "llamacpp", "messages": USER, "max_tokens": 1500, "stream": True}).encode()
        writer.write(raw_request("POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"}))
        assert (await read_head(reader, 60))[0] == 200
        await asyncio.wait_for(spy.first.wait(), 60)
        writer.close()
        await wait_until(lambda: spy.closed == 1, 30, "the engine stream to close")
        await wait_until(lambda: daemon.server.router.outstanding == 0, 30, "the slot to be released")
        assert spy.events < 200, f"{spy.events} tokens produced after the client left"
    finally:
        del backend.generate  # the spy was an instance attribute over the class method


async def test_metrics_follow_the_sdk_usage(base):
    async def scrape() -> dict[str, float]:
        async with httpx.AsyncClient() as h:
            text = (await h.get(base.removesuffix("/v1") + "/metrics",
                                headers={"authorization": f"Bearer {KEY}"})).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("surface") == "http" and s.labels.get("outcome", "ok") == "ok":
                    out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    async with async_client(base) as client:
        before = await scrape()
        r = await client.chat.completions.create(model="llamacpp", messages=USER, max_tokens=10, temperature=0)
        e = await client.embeddings.create(model="llamacpp", input=["one", "two"])
        after = await scrape()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    assert delta["inferd_requests_total"] == 2  # one generation, one embed request
    assert delta["inferd_completion_tokens_total"] == r.usage.completion_tokens
    assert delta["inferd_prompt_tokens_total"] == r.usage.prompt_tokens
    assert delta["inferd_prompt_cached_tokens_total"] == r.usage.prompt_tokens_details.cached_tokens
    assert delta["inferd_embed_input_tokens_total"] == e.usage.prompt_tokens
    assert delta["inferd_time_to_first_token_seconds_count"] == 1
    assert delta["inferd_decode_tokens_per_second_count"] == 1


async def test_cli_run_raw_equals_the_raw_completion(base, daemon):
    """`inferd run --raw` sends v1's `prompt` (no chat template): greedy, its text is
    what /v1/completions answers for the same prompt."""
    from typer.testing import CliRunner

    from inferd.cli.main import app

    def cli() -> str:
        r = CliRunner().invoke(app, ["run", "--raw", "The sea is", "--max-tokens", "12", "--temperature", "0",
                                     "--addr", daemon.infer])
        assert r.exit_code == 0, r.output
        return r.stdout

    def sdk() -> str:
        with sync_client(base) as client:
            return client.completions.create(model="llamacpp", prompt="The sea is", max_tokens=12,
                                             temperature=0).choices[0].text

    assert await asyncio.to_thread(cli) == await asyncio.to_thread(sdk) + "\n"


async def test_constrained_answers_that_stop_always_parse_strictly(base):
    # Issue 21: the converter let a raw newline or tab into a JSON string; strict
    # parsers (json.loads, pydantic, the agents SDK) then refuse the whole answer.
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "poem": {"type": "string"}},
              "required": ["title", "poem"]}
    ask = [{"role": "user", "content": 'Write a short poem of four lines about the sea, keeping its line breaks, '
                                       'tabs and "quotes", as JSON with a title and the poem.'}]

    async def one(client: openai.AsyncOpenAI, seed: int, fmt: dict) -> tuple[str, str]:
        r = await client.chat.completions.create(model="llamacpp", messages=ask, max_tokens=160, temperature=1.0,
                                                 seed=seed, response_format=fmt)
        return r.choices[0].finish_reason, r.choices[0].message.content or ""

    formats = [{"type": "json_schema", "json_schema": {"name": "poem", "schema": schema, "strict": True}},
               {"type": "json_object"}]
    stopped = 0
    async with async_client(base) as client:
        for seed in range(8):
            fmt = formats[seed % 2]
            finish, text = await one(client, 100 + seed, fmt)
            if finish != "stop":
                continue
            stopped += 1
            value = json.loads(text, strict=True)  # strict: no control characters inside strings
            if fmt["type"] == "json_schema":
                jsonschema.validate(value, schema)
            else:
                assert isinstance(value, dict)
    assert stopped >= 3, f"only {stopped} of 8 answers finished with stop: the check saw too little"


async def test_no_seed_samples_afresh_and_a_seed_repeats(base):
    # Issue 21: without a seed every request used the configured one, so a client's
    # retry repeated the same (bad) output; OpenAI and llama-server sample afresh.
    story = [{"role": "user", "content": "Tell me a short story about a fox."}]
    async with async_client(base) as client:
        async def text(**kw) -> str:
            r = await client.chat.completions.create(model="llamacpp", messages=story, max_tokens=24,
                                                     temperature=1.0, **kw)
            return r.choices[0].message.content or ""

        unseeded = {await text() for _ in range(4)}
        assert len(unseeded) > 1, unseeded
        assert len({await text(seed=-1) for _ in range(2)}) > 1  # llama-server's "no particular seed"
        assert await text(seed=1234) == await text(seed=1234)


async def test_completions_honour_response_format(base):
    # Issue 21: /v1/completions ignored response_format (only `grammar` was enforced).
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                               "capital": {"type": "boolean"}},
              "required": ["city", "capital"]}
    async with async_client(base) as client:
        r = await client.completions.create(
            model="llamacpp", prompt="The capital of France, as JSON:", max_tokens=48, temperature=0,
            extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
        jsonschema.validate(json.loads(r.choices[0].text), schema)
        r = await client.completions.create(model="llamacpp", prompt="A JSON object describing a cat:",
                                            max_tokens=48, temperature=0,
                                            extra_body={"response_format": {"type": "json_object"}})
        assert r.choices[0].text.lstrip().startswith("{")


async def test_a_forced_call_cut_by_max_tokens_finishes_with_length(base):
    # Issue 21: this was a 502 tool_call_malformed (streamed: an error event, no [DONE]).
    async with async_client(base) as client:
        whole = await client.chat.completions.create(
            model="llamacpp", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
            tool_choice="required", max_tokens=6, temperature=0)
        assert whole.choices[0].finish_reason == "length"
        chunks = [c async for c in await client.chat.completions.create(
            model="llamacpp", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
            tool_choice="required", max_tokens=6, temperature=0, stream=True)]
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
