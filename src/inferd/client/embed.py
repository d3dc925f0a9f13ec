"""Embed socket client (ADR 0017): one request line out, one response line back."""

from __future__ import annotations

import asyncio
from types import TracebackType

from inferd.proto.embed import EmbeddingsFrame, EmbedErrorFrame, EmbedRequest, parse_embed_response
from inferd.proto.errors import DecodeError

from . import transport
from .errors import ClientDecodeError, UnexpectedEof
from .transport import Connection, Dialable


class EmbedClient(Dialable):
    """An embed connection; reusable for any number of sequential requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn = Connection(reader, writer)
        # Concurrent callers would otherwise read each other's responses.
        self._lock = asyncio.Lock()


    @property
    def closed(self) -> bool:
        return self._conn.closed

    async def embed(self, request: EmbedRequest) -> EmbeddingsFrame | EmbedErrorFrame:
        """Send one request and return its single response frame."""
        line = transport.encode_line(request)
        async with self._lock:
            try:
                await self._conn.send(line)
                raw = await self._conn.recv()
                if raw is None:
                    raise UnexpectedEof("daemon closed the connection before the embed response")
                try:
                    return parse_embed_response(raw)
                except DecodeError as exc:
                    raise ClientDecodeError(exc.message) from None
            except BaseException:
                # A half-finished exchange leaves the stream out of step; never reuse it.
                self._conn.close()
                raise

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def __aenter__(self) -> "EmbedClient":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
