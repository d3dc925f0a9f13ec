"""Protocol v1 client: send a Request, stream frames back to its terminal frame.

Timeouts: see `inferd.client.transport`. By default a stream waits for its frames
as long as the daemon takes (a queued request may wait a long time); give
`read_timeout=` when dialing, or set `client.read_timeout`, to bound the wait for
each frame. A timeout raises ReadTimeout / WriteTimeout from the stream and closes
the connection, which cancels the request in the daemon.

`generate(request, progress=True)` asks the daemon for `progress` frames (queued
position, prompt read so far, the context the request will use) before the first
token; `inferd.client.events` turns them into spinner and status events.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Union

from inferd.proto.errors import DecodeError
from inferd.proto.v1 import (
    CountFrame,
    DoneFrame,
    ErrorFrame,
    ProgressFrame,
    Request,
    StatusFrame,
    TokenFrame,
    parse_response,
)

from . import transport
from .budget import check_image_token_budget
from .errors import ClientDecodeError, ClientError, UnexpectedEof
from .transport import DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Dialable

Frame = Union[TokenFrame, DoneFrame, ErrorFrame, StatusFrame, CountFrame, ProgressFrame]


class FrameStream:
    """The frames answering one request, ending after the first `done` or `error`.

    A connection carries one request at a time, so an abandoned stream (closed
    before its terminal frame) drops the connection: that is also how the daemon
    learns to stop generating (upstream ADR 0007).
    """

    # The one thing the v2 stream changes (client_v2.FrameStreamV2).
    _parse = staticmethod(parse_response)

    def __init__(self, client: "Client", line: bytes, request_id: str = "", request: Any = None) -> None:
        self._client = client
        self._line = line
        self._request_id = request_id
        self._request = request
        self._sent = False
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def request_id(self) -> str:
        """The `id` of the request this stream answers ("" when it had none)."""
        return self._request_id

    @property
    def request(self) -> Any:
        """The request this stream answers, as sent (the events adapter reads its
        `model`, `tools` and `max_tokens`)."""
        return self._request

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
            # Whatever went wrong, the connection is now mid-response and unusable;
            # abort rather than close, so a half-sent request is not flushed first.
            conn.abort()
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
    """A v1 inference connection. Requests run one after another on it.

    `read_timeout` (default None: wait as long as the daemon takes) bounds the wait
    for each frame; `write_timeout` (default 30 s) the sending of each request.
    Both can be changed later through the properties of the same names.
    """

    # What differs between the v1 and v2 clients (ClientV2 overrides both).
    _stream_type: type[FrameStream] = FrameStream
    _omit_empty: tuple[str, ...] = ("id", "grammar")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        super().__init__(reader, writer, read_timeout=read_timeout, write_timeout=write_timeout)
        self._active: FrameStream | None = None

    def generate(self, request: Request, *, progress: bool | None = None) -> FrameStream:
        """Send `request`; iterate the returned stream for its frames.

        `progress` (when given) sets the request's `progress` field: True asks for
        `progress` frames before the first token (protocol §5.1).

        The request is written on the first iteration. EOF before the terminal
        frame raises UnexpectedEof; an undecodable frame raises ClientDecodeError;
        a timeout raises WriteTimeout or ReadTimeout; a reset or refused connection
        a ClientIOError. After any of these the connection is closed. A request the
        daemon would refuse for its image_token_budget raises InvalidRequest here,
        before anything is sent.
        """
        if progress is not None:
            request = request.model_copy(update={"progress": progress})
        check_image_token_budget(getattr(request, "image_token_budget", None))
        if self._active is not None and not self._active.finished:
            raise ClientError(
                "the previous response on this connection is still streaming; "
                "read it to its end or aclose() it first"
            )
        line = transport.encode_line(request, omit_empty=self._omit_empty)
        stream = self._stream_type(self, line, request_id=request.id, request=request)
        self._active = stream
        return stream

    async def complete(self, request: Request, *, progress: bool | None = None) -> DoneFrame | ErrorFrame:
        """Run `request` to completion and return its terminal frame."""
        async with self.generate(request, progress=progress) as stream:
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
