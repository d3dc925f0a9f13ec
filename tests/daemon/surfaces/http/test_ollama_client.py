"""The official `ollama` Python client against Ollama's API on `inferd serve --http`, on
the real Gemma 3 270M: chat and generate (whole and streamed agree), `format` with a
JSON schema that parses and validates, tools declared and a tool round trip, embed
and the old embeddings call, list / ps / show, and the errors the client raises.

One in-process daemon for the module, with an API key (the client sends it as a
header); the async client runs on the daemon's own loop. The embedded model is a base
model: greedy decoding and short answers.
"""

from __future__ import annotations

import json
import os

import jsonschema
import ollama
import pytest
import pytest_asyncio

from daemon_harness import cleanup, short_tmpdir, start_daemon
from http_helpers import http_address

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "ollama-test-key"
GREEDY = {"temperature": 0, "num_predict": 8, "seed": 7}
USER = [{"role": "user", "content": "Name three colours of the rainbow."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=2048, n_threads=2,
                                llamacpp_embed=True, http="127.0.0.1:0", api_key=KEY)
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


@pytest.fixture
def client(daemon) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=f"http://{http_address(daemon)}", headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture
def name(daemon) -> str:
    return daemon.server.router.entries[0].caps.model


async def test_chat_whole_and_streamed_agree(client, name):
    whole = await client.chat(model=name, messages=USER, options=GREEDY, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    assert whole.message.content and whole.eval_count and whole.prompt_eval_count
    assert whole.total_duration >= whole.eval_duration > 0
    parts = [p async for p in await client.chat(model=name, messages=USER, options=GREEDY, stream=True)]
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


async def test_generate_whole_and_streamed_agree(client, name):
    whole = await client.generate(model=name, prompt="The capital of France is", options=GREEDY)
    assert whole.done and whole.response and whole.eval_count <= GREEDY["num_predict"]
    parts = [p async for p in await client.generate(model=name, prompt="The capital of France is",
                                                     options=GREEDY, stream=True)]
    assert "".join(p.response for p in parts) == whole.response and parts[-1].done


async def test_format_schema_answer_parses_and_validates(client, name):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                               "bright": {"type": "boolean"}},
              "required": ["colour", "bright"], "additionalProperties": False}
    r = await client.chat(model=name, messages=[{"role": "user", "content": "Pick a colour, as JSON."}],
                          format=schema, options={"temperature": 0, "num_predict": 40})
    assert r.done_reason == "stop", r
    jsonschema.validate(json.loads(r.message.content), schema)


async def test_tools_declared_and_a_tool_round_trip(client, name):
    r = await client.chat(model=name, messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
                          tools=[WEATHER], options=GREEDY)
    assert r.done and r.done_reason in ("stop", "length")
    for call in r.message.tool_calls or ():
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    history = [{"role": "user", "content": "What is the weather in Oslo?"},
               ollama.Message(role="assistant", content="", tool_calls=[ollama.Message.ToolCall(
                   function=ollama.Message.ToolCall.Function(name="get_weather", arguments={"city": "Oslo"}))]),
               {"role": "tool", "content": "12 degrees and rain", "tool_name": "get_weather"}]
    r = await client.chat(model=name, messages=history, tools=[WEATHER], options={**GREEDY, "num_predict": 4})
    assert r.done and r.eval_count and r.prompt_eval_count > 20  # the call and its result were in the prompt


async def test_embed_and_the_old_embeddings(client, name):
    r = await client.embed(model=name, input=["red", "a longer text about colours"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == len(r.embeddings[1]) > 8
    assert r.prompt_eval_count >= 2
    old = await client.embeddings(model=name, prompt="red")
    assert old.embedding == pytest.approx(r.embeddings[0], rel=1e-4, abs=1e-5)


async def test_list_ps_show(client, name, daemon, model_path):
    # The listings show the catalog's name (the config entry's, issue 20); the name
    # the model reports (`name`) is one more name a request may give.
    (listed,) = [m.name for m in daemon.server.ctx.models.catalog.models]
    (model,) = (await client.list()).models
    assert (await client.show(name)).modelinfo["general.name"] == listed
    name = listed
    assert model.model == name and model.size == os.path.getsize(model_path) and model.details.format == "gguf"
    running = await client.ps()
    assert [m.model for m in running.models] == [name] and running.models[0].context_length == 2048
    shown = await client.show(name)
    assert "completion" in shown.capabilities and "embedding" in shown.capabilities
    assert shown.modelinfo["context_length"] == 2048


async def test_errors_the_client_raises(client, name):
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat(model=name, messages=USER, keep_alive="soon")
    assert err.value.status_code == 400 and "keep_alive" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        await client.show("no-such-model")
    assert err.value.status_code == 404 and err.value.error == "model 'no-such-model' not found"
    unkeyed = ollama.AsyncClient(host=str(client._client.base_url))
    with pytest.raises(ollama.ResponseError) as err:
        await unkeyed.list()
    assert err.value.status_code == 401
