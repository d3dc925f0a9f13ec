"""Serving v2 text requests through a backend's v1 path (engine/v2_text.py)."""

from __future__ import annotations

import pytest

from inferd.engine.backend import Backend, BackendCapabilities, BackendInvalidRequest, Done, Token
from inferd.engine.events_v2 import DoneV2, TextDelta
from inferd.engine.v2_text import AttachmentUnsupported, generate_v2_as_text, v1_request
from inferd.proto.v1 import StopReason
from inferd.proto.v2 import parse_request


class Recorder(Backend):
    """A v1-only backend that remembers what it was asked and how far it was read."""

    name = "recorder"

    def __init__(self, tokens: list[str], stop: StopReason = StopReason.END) -> None:
        self.tokens, self.stop, self.seen, self.closed_after = tokens, stop, None, None

    def ready(self) -> bool:
        return True

    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities()

    async def generate(self, request):
        self.seen = request
        return self._stream()

    async def _stream(self):
        sent = 0
        try:
            for tok in self.tokens:
                yield Token(tok)
                sent += 1
            yield Done(self.stop, prompt_tokens=7, completion_tokens=sent)
        finally:
            self.closed_after = sent


def v2(body: str):
    return parse_request(body).resolve()


TEXT = '{"id":"t","messages":[{"role":"system","content":[{"type":"text","text":"Be brief."}]},' \
       '{"role":"user","content":[{"type":"text","text":"Hello "},{"type":"text","text":"there"}]}],' \
       '"max_tokens":5,"temperature":0}'


async def test_text_request_becomes_v1_and_events_are_relayed():
    backend = Recorder(["a", "b"], StopReason.LENGTH)
    events = [e async for e in await generate_v2_as_text(backend, v2(TEXT))]
    assert events == [TextDelta("a"), TextDelta("b"), DoneV2("max_tokens", input_tokens=7, output_tokens=2)]
    seen = backend.seen
    assert [(m.role.value, m.content) for m in seen.messages] == [("system", "Be brief."), ("user", "Hello there")]
    assert seen.max_tokens == 5 and seen.temperature == 0.0 and seen.top_k == 64 and seen.top_p == 0.95


async def test_closing_the_v2_stream_closes_the_v1_stream():
    backend = Recorder(["a", "b", "c", "d"])
    stream = await generate_v2_as_text(backend, v2(TEXT))
    assert await stream.__anext__() == TextDelta("a")
    assert backend.closed_after is None  # still generating
    await stream.aclose()
    # Closed while suspended at its first token, never resumed for the second.
    assert backend.closed_after == 0


def test_attachments_and_tools_are_refused_before_generation():
    image = ('{"messages":[{"role":"user","content":[{"type":"image","attachment_id":"i"}]}],'
             '"attachments":[{"kind":"image","id":"i","width":1,"height":1,"bytes":"AAAA"}]}')
    with pytest.raises(AttachmentUnsupported) as exc:
        v1_request(v2(image))
    assert exc.value.code == "attachment_unsupported"
    tools = ('{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],'
             '"tools":[{"name":"f","description":"d","input_schema":{}}]}')
    with pytest.raises(BackendInvalidRequest, match="tool declarations"):
        v1_request(v2(tools))
    replay = ('{"messages":[{"role":"assistant","content":[{"type":"tool_use","tool_call_id":"c","name":"f",'
              '"input":{}}]}]}')
    with pytest.raises(BackendInvalidRequest, match=r"messages\[0\].content\[0\]: tool_use"):
        v1_request(v2(replay))
