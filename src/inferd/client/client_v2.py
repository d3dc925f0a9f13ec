"""Protocol v2 client: send a RequestV2, stream typed frames back to its terminal frame.

    client = await ClientV2.dial_uds(default_v2_addr())
    async for frame in client.generate(request):
        if isinstance(frame, FrameV2) and frame.block.type == "text":
            print(frame.block.delta, end="")
"""

from __future__ import annotations

from typing import Union

from inferd.proto.v1 import CountFrame, ProgressFrame
from inferd.proto.v2 import DoneFrameV2, ErrorFrameV2, FrameV2, parse_response

from .client import Client, FrameStream

FrameV2Any = Union[FrameV2, DoneFrameV2, ErrorFrameV2, CountFrame, ProgressFrame]


class FrameStreamV2(FrameStream):
    """The v2 frames answering one request, ending after the first `done` or `error`.

    Same life cycle as the v1 stream: closing it early drops the connection,
    which is how the daemon learns to stop generating.
    """

    _parse = staticmethod(parse_response)


class ClientV2(Client):
    """A v2 inference connection (`infer.v2.sock`). Requests run one after another on it.

    Same life cycle as the v1 Client; frames are v2 frames, and RequestV2 already
    serialises compactly by itself (no empty id, attachments or tools).
    """

    _stream_type = FrameStreamV2  # type: ignore[assignment]
    _omit_empty = ()
