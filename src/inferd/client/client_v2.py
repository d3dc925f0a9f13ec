"""Protocol v2 client: send a RequestV2, stream typed frames back to its terminal frame.

    client = await ClientV2.dial_uds(default_v2_addr())
    async for frame in client.generate(request):
        if isinstance(frame, FrameV2) and frame.block.type == "text":
            print(frame.block.delta, end="")
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Union

from inferd.proto.errors import DecodeError
from inferd.proto.v2 import DoneFrameV2, ErrorFrameV2, FrameV2, RequestV2, parse_response

from . import transport
from .client import FrameStream
from .errors import ClientDecodeError, ClientError, UnexpectedEof
from .transport import Connection, Dialable

FrameV2Any = Union[FrameV2, DoneFrameV2, ErrorFrameV2]


class FrameStreamV2(FrameStream):
    """The v2 frames answering one request, ending after the first `done` or `error`.

    Same life cycle as the v1 stream: closing it early drops the connection,
    which is how the daemon learns to stop generating.
    """

    def __aiter__(self) -> "FrameStreamV2":
        return self

    async def __anext__(self) -> FrameV2Any:  # type: ignore[override]
        if self._finished:
            raise StopAsyncIteration
        conn = self._client._conn
        try:
            if not self._sent:
                self._sent = True
                await conn.send(self._line)
            raw = await conn.recv()
            if raw is None:
                raise UnexpectedEof()
            try:
                frame = parse_response(raw)
            except DecodeError as exc:
                raise ClientDecodeError(exc.message) from None
        except BaseException:
            # Mid-response, the connection can no longer be reused.
            self._finish(drop_connection=True)
            raise
        if frame.is_terminal:
            self._finish(drop_connection=False)
        return frame

    async def __aenter__(self) -> "FrameStreamV2":
        return self


class ClientV2(Dialable):
    """A v2 inference connection. Requests run one after another on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn = Connection(reader, writer)
        self._active: FrameStreamV2 | None = None


    @property
    def closed(self) -> bool:
        return self._conn.closed

    def generate(self, request: RequestV2) -> FrameStreamV2:
        """Send `request`; iterate the returned stream for its frames.

        The request is written on the first iteration. EOF before the terminal
        frame raises UnexpectedEof; an undecodable frame raises ClientDecodeError.
        """
        if self._active is not None and not self._active.finished:
            raise ClientError(
                "the previous response on this connection is still streaming; "
                "read it to its end or aclose() it first"
            )
        # RequestV2 serialises compactly by itself (no empty id, attachments or tools).
        stream = FrameStreamV2(self, transport.encode_line(request, omit_empty=()))  # type: ignore[arg-type]
        self._active = stream
        return stream

    async def complete(self, request: RequestV2) -> DoneFrameV2 | ErrorFrameV2:
        """Run `request` to completion and return its terminal frame, skipping the deltas."""
        async with self.generate(request) as stream:
            async for frame in stream:
                if isinstance(frame, (DoneFrameV2, ErrorFrameV2)):
                    return frame
        raise UnexpectedEof()  # pragma: no cover - the stream raises before this

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def __aenter__(self) -> "ClientV2":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
