"""Protocol v1 client: send a Request, stream frames back to its terminal frame."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Union

from inferd.proto.errors import DecodeError
from inferd.proto.v1 import DoneFrame, ErrorFrame, Request, StatusFrame, TokenFrame, parse_response

from . import transport
from .errors import ClientDecodeError, ClientError, UnexpectedEof
from .transport import Connection, Dialable

Frame = Union[TokenFrame, DoneFrame, ErrorFrame, StatusFrame]


class FrameStream:
    """The frames answering one request, ending after the first `done` or `error`.

    A connection carries one request at a time, so an abandoned stream (closed
    before its terminal frame) drops the connection: that is also how the daemon
    learns to stop generating (upstream ADR 0007).
    """

    # The one thing the v2 stream changes (client_v2.FrameStreamV2).
    _parse = staticmethod(parse_response)

    def __init__(self, client: "Client", line: bytes) -> None:
        self._client = client
        self._line = line
        self._sent = False
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def __aiter__(self) -> "FrameStream":
        return self

    async def __anext__(self) -> Frame:
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
                frame = self._parse(raw)
            except DecodeError as exc:
                raise ClientDecodeError(exc.message) from None
        except BaseException:
            # Whatever went wrong, the connection is now mid-response and unusable.
            self._finish(drop_connection=True)
            raise
        if frame.is_terminal:
            self._finish(drop_connection=False)
        return frame

    def _finish(self, drop_connection: bool) -> None:
        self._finished = True
        if self._client._active is self:
            self._client._active = None
        if drop_connection:
            self._client._conn.close()

    async def aclose(self) -> None:
        if not self._finished:
            self._finish(drop_connection=self._sent)

    async def __aenter__(self) -> "FrameStream":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Client(Dialable):
    """A v1 inference connection. Requests run one after another on it."""

    # What differs between the v1 and v2 clients (ClientV2 overrides both).
    _stream_type: type[FrameStream] = FrameStream
    _omit_empty: tuple[str, ...] = ("id", "grammar")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn = Connection(reader, writer)
        self._active: FrameStream | None = None

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def generate(self, request: Request) -> FrameStream:
        """Send `request`; iterate the returned stream for its frames.

        The request is written on the first iteration. EOF before the terminal
        frame raises UnexpectedEof; an undecodable frame raises ClientDecodeError.
        """
        if self._active is not None and not self._active.finished:
            raise ClientError(
                "the previous response on this connection is still streaming; "
                "read it to its end or aclose() it first"
            )
        stream = self._stream_type(self, transport.encode_line(request, omit_empty=self._omit_empty))
        self._active = stream
        return stream

    async def complete(self, request: Request) -> DoneFrame | ErrorFrame:
        """Run `request` to completion and return its terminal frame."""
        async with self.generate(request) as stream:
            async for frame in stream:
                if frame.is_terminal:
                    return frame  # type: ignore[return-value]
        raise UnexpectedEof()  # pragma: no cover - the stream raises before this

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
