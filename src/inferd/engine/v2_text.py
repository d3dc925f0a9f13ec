"""Serving protocol v2 with a text-only (v1) backend.

A v2 request made only of text blocks is the same question as a v1 request: join
each message's text, generate with the backend's v1 path, and relay the tokens as
text deltas. Attachments and tools need a model that understands them; such a
request is refused before anything runs (`attachment_unsupported`, or
`invalid_request` naming the tool block), never half-served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..proto.v1 import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, Message, Resolved, Role, StopReason
from ..proto.v2 import ResolvedV2, StopReasonV2, TextBlock
from .backend import Backend, BackendError, BackendInvalidRequest, Done, Token
from .events_v2 import DoneV2, EventV2, TextDelta


class AttachmentUnsupported(BackendError):
    code = "attachment_unsupported"


_STOP = {StopReason.END: StopReasonV2.END_TURN, StopReason.LENGTH: StopReasonV2.MAX_TOKENS,
         StopReason.CANCELLED: StopReasonV2.CANCELLED, StopReason.ERROR: StopReasonV2.ERROR}


def v1_request(req: ResolvedV2) -> Resolved:
    """The v1 request a text-only v2 request amounts to; refuses what text cannot carry."""
    if req.attachments:
        raise AttachmentUnsupported("this backend has no media encoder: attachments are not supported")
    if req.tools:
        raise BackendInvalidRequest("this backend's chat template does not support tool declarations")
    messages = []
    for i, msg in enumerate(req.messages):
        parts = []
        for j, block in enumerate(msg.content):
            if not isinstance(block, TextBlock):
                raise BackendInvalidRequest(
                    f"messages[{i}].content[{j}]: {block.type} blocks need a tool- or media-capable backend"
                )
            parts.append(block.text)
        messages.append(Message(role=Role(msg.role.value), content="".join(parts)))
    return Resolved(
        id=req.id,
        messages=messages,
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=DEFAULT_TOP_P if req.top_p is None else req.top_p,
        top_k=DEFAULT_TOP_K if req.top_k is None else req.top_k,
        max_tokens=DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens,
    )


async def generate_v2_as_text(backend: Backend, req: ResolvedV2) -> AsyncIterator[EventV2]:
    """Pre-stream errors are raised here; the returned stream relays v1 events as v2."""
    stream = await backend.generate(v1_request(req))
    return _relay(stream)


async def _relay(stream: AsyncIterator[Token | Done]) -> AsyncIterator[EventV2]:
    try:
        async for event in stream:
            if type(event) is Token:
                yield TextDelta(event.text)
            else:
                yield DoneV2(_STOP[event.stop_reason], input_tokens=event.prompt_tokens,
                             output_tokens=event.completion_tokens)
                return
    finally:
        await stream.aclose()  # closing the v2 stream cancels the generation
