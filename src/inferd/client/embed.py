"""Embed socket client (upstream ADR 0017): one request line out, one response line back."""

from __future__ import annotations

import asyncio
from types import TracebackType

from inferd.proto.embed import EmbeddingsFrame, EmbedErrorFrame, EmbedRequest, parse_embed_response
from inferd.proto.errors import DecodeError

from . import transport
from .errors import ClientDecodeError, UnexpectedEof
from .transport import DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Dialable


class EmbedClient(Dialable):
    """An embed connection; reusable for any number of sequential requests.

    `read_timeout` defaults to None, as for generation: an embedding request takes
    an admission slot and waits in the same queue as generations (protocol §8),
    so its answer can be as late as the requests ahead of it. `write_timeout`
    defaults to 30 s. A timeout raises ReadTimeout / WriteTimeout and closes the
    connection.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        super().__init__(reader, writer, read_timeout=read_timeout, write_timeout=write_timeout)
        # Concurrent callers would otherwise read each other's responses.
        self._lock = asyncio.Lock()

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
                self._conn.abort()
                raise

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def __aenter__(self) -> "EmbedClient":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
