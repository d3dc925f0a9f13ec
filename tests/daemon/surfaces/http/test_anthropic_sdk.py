"""Anthropic's Messages API on the real Gemma 3 270M through the `anthropic` SDK:
messages.create, messages.stream (its accumulated message equals the whole answer),
a forced tool call and its tool_result round trip, and a missing max_tokens refused
as Anthropic refuses it. One daemon for the module; greedy, short answers."""

from __future__ import annotations

import anthropic
import pytest
import pytest_asyncio

from daemon_harness import cleanup, short_tmpdir, start_daemon
from http_helpers import http_address

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "anthropic-test-key"
GREEDY = {"temperature": 0}  # this SDK release no longer takes temperature as an argument
USER = [{"role": "user", "content": "Name three colours of the rainbow."}]
WEATHER = {"name": "get_weather", "description": "Current weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"]}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=2048, n_threads=2,
                                http="127.0.0.1:0", api_key=KEY)
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


@pytest.fixture
def client(daemon) -> anthropic.AsyncAnthropic:
    # The SDK sends its key as x-api-key, and anthropic-version.
    return anthropic.AsyncAnthropic(base_url=f"http://{http_address(daemon)}", api_key=KEY, max_retries=0)


@pytest.fixture
def model_name(daemon) -> str:
    return daemon.server.router.entries[0].caps.model


async def test_create_and_stream_agree(client, model_name):
    whole = await client.messages.create(model=model_name, max_tokens=24, messages=USER, extra_body=GREEDY,
                                         system="Answer briefly.")
    assert whole.type == "message" and whole.role == "assistant" and whole.model == model_name
    (block,) = whole.content
    assert block.type == "text" and block.text
    assert whole.stop_reason in ("end_turn", "max_tokens") and 0 < whole.usage.output_tokens <= 24
    async with client.messages.stream(model=model_name, max_tokens=24, messages=USER, extra_body=GREEDY,
                                      system=[{"type": "text", "text": "Answer briefly."}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == final.content[0].text == block.text  # greedy: the same answer either way
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) > 0


async def test_stop_sequence_is_named(client, model_name):
    """llama.cpp's scheduler names the stop string it cut at (through the runner's
    channel): a word of the greedy answer, asked as a stop, ends the answer there."""
    whole = await client.messages.create(model=model_name, max_tokens=24, messages=USER, extra_body=GREEDY)
    text = whole.content[0].text
    word = next(w for w in text.split()[1:] if len(w) > 2)
    cut = await client.messages.create(model=model_name, max_tokens=24, messages=USER, extra_body=GREEDY,
                                       stop_sequences=[word])
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", word)
    assert cut.content[0].text == text[:text.index(word)]


async def test_tool_use_round_trip(client, model_name):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = await client.messages.create(model=model_name, max_tokens=64, messages=messages, tools=[WEATHER],
                                         tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": "sunny, 21 degrees"}]}]
    async with client.messages.stream(model=model_name, max_tokens=32, messages=messages, tools=[WEATHER],
                                      tool_choice={"type": "none"}, extra_body=GREEDY) as stream:
        second = await stream.get_final_message()
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"] and second.content[0].text


async def test_missing_max_tokens_is_invalid_request(client, model_name):
    with pytest.raises(anthropic.BadRequestError) as info:
        # The SDK will not send it without max_tokens; its generic post will.
        await client.post("/v1/messages", body={"model": model_name, "messages": USER}, cast_to=object)
    assert info.value.status_code == 400
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in info.value.body["error"]["message"]


async def test_wrong_key_is_authentication_error(daemon, model_name):
    async with anthropic.AsyncAnthropic(base_url=f"http://{http_address(daemon)}", api_key="wrong",
                                        max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as info:
            await wrong.messages.create(model=model_name, max_tokens=4, messages=USER)
    assert info.value.body["error"]["type"] == "authentication_error"
