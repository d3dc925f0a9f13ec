"""The Responses API on the real Gemma 3 270M through the clients that speak it: the
openai-agents SDK's default (Responses) model running an agent with a function tool
(called, and its output sent back for the next turn), and the openai SDK's
`responses.create` with text.format json_schema, whole and streamed.

One daemon for the module; greedy decoding and short answers (the model is tiny)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import pytest_asyncio
from pydantic import BaseModel, Field

from daemon_harness import cleanup, short_tmpdir, start_daemon
from http_helpers import http_address

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Report(BaseModel):
    sky: str = Field(max_length=30)

KEY = "responses-test-key"
SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}},
          "required": ["colour"], "additionalProperties": False}
FORMAT = {"format": {"type": "json_schema", "name": "colour", "schema": SCHEMA, "strict": True}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=2048, n_threads=2,
                                http="127.0.0.1:0", api_key=KEY)
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


@pytest.fixture
def client(daemon) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://{http_address(daemon)}/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def model_name(daemon) -> str:
    return daemon.server.router.entries[0].caps.model


async def test_agent_calls_a_function_tool_and_reads_its_output(client, model_name):
    from agents import Agent, ModelSettings, Runner, function_tool, set_default_openai_client, set_tracing_disabled

    set_tracing_disabled(True)
    set_default_openai_client(client, use_for_tracing=False)  # the default model: the Responses API
    asked: list[str] = []

    # The model is too small to choose: the first turn is forced to call the tool, which
    # then steps aside (is_enabled), so the next turn, with the tool's output in its
    # input, answers in the output type's schema (text.format json_schema, which the
    # SDK sends on the forced turn too: a call writes no text for it to shape).
    @function_tool(is_enabled=lambda ctx, agent: not asked)
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return "sunny and 21 degrees"

    agent = Agent(name="weather", instructions="Answer in JSON.", tools=[get_weather], output_type=Report,
                  model=model_name, model_settings=ModelSettings(tool_choice="get_weather", temperature=0,
                                                                 max_tokens=96))
    result = await Runner.run(agent, "What is the weather in Oslo?", max_turns=3)
    assert asked and all(isinstance(city, str) for city in asked)
    sent_back = [item for item in result.to_input_list() if item.get("type") == "function_call_output"]
    assert sent_back and sent_back[0]["output"] == "sunny and 21 degrees"
    assert len(result.raw_responses) == 2  # the call, then the answer to its output
    assert isinstance(result.final_output, Report) and len(result.final_output.sky) <= 30
    assert all(r.usage.input_tokens > 0 for r in result.raw_responses)


async def test_json_schema_output_whole_and_streamed(client, model_name):
    request = dict(model=model_name, instructions="Answer in JSON.", input="Name a colour of the rainbow.",
                   text=FORMAT, max_output_tokens=48, temperature=0)
    whole = await client.responses.create(**request)
    assert whole.status == "completed" and whole.object == "response" and whole.model == model_name
    answer = json.loads(whole.output_text)
    jsonschema.validate(answer, SCHEMA)
    assert whole.usage.output_tokens > 0 and whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens

    stream = await client.responses.create(**request, stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert deltas == done.text == events[-1].response.output_text == whole.output_text  # greedy: the same


async def test_previous_response_id_is_refused(client, model_name):
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model=model_name, input="hi", previous_response_id="resp_123")
    assert info.value.code == "previous_response_not_found" and "stateless" in info.value.message
