"""The two ends of one HTTP exchange: reading a bounded body, writing a bounded response.

F-1: a body is read up to MAX_BODY_BYTES (the NDJSON frame cap, 64 MiB); beyond it
the rest is discarded for at most BODY_LINGER_SECS so the client can read our 413
before the connection closes (closing on unread input resets the connection and
the client would lose the answer), and nothing past the cap is ever held.

F-22: a body is read within the read timeout (`408` past it) and from the daemon's
byte budget (`413` with `Retry-After` when the budget has no room: the budget is
daemon-wide, so the next try may fit). A declared `Content-Length` is taken from the
budget before a byte is read, so a client that declares 64 MiB and drips them holds
its share for at most the read timeout; a chunked body is taken chunk by chunk. The
rules travel in the request's scope (`BODY_RULES`, set by the app), so every route
that reads a body reads it under them.

F-17: every write waits for the client to read at most the write timeout (the bound
net/conn.py defines for every surface); then the connection is aborted and the write raises WriteTimeout (a ConnectionError), which
the pipeline treats like a client that left: the generation is cancelled and its
slot freed. uvicorn's own `send` would wait for a stalled reader forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ....proto.framing import MAX_FRAME_BYTES
from ...net.buffers import ByteBudget
from ...net.conn import WriteTimeout, bounded, ensure_open, write_may_wait
from .errors import RETRY_AFTER_SECS, HttpError

MAX_BODY_BYTES = MAX_FRAME_BYTES
BODY_LINGER_SECS = 2.0

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = (b"content-type", b"application/json")
CLOSE = (b"connection", b"close")


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class HttpPeer(Protocol):
    """One HTTP connection as the app sees it (kept by server.py, by client address)."""

    transport: asyncio.Transport
    pending: bool

    def begin(self, authorized: bool) -> bool:
        """A request reached a route: stop the head deadline; an authorized one moves a
        pending connection into the HTTP pool (False: that pool is full)."""
        ...

    def end(self) -> None:
        """The request's response is done: the next request's head is due in time.
        Called once for each begin(), and only for a request that called it."""
        ...


#: The scope key of a request's BodyRules.
BODY_RULES = "inferd.body_rules"


@dataclass(frozen=True, slots=True)
class BodyRules:
    """F-22: how long a body may take, the budget it is read from, who hears of a refusal."""

    timeout: float | None
    budget: ByteBudget | None
    refused: Callable[[str, str], None]


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def peer_label(scope: dict[str, Any]) -> str:
    """The client as the activity log and admission name it (`tcp:HOST:PORT`)."""
    client = scope.get("client")
    return f"tcp:{client[0]}:{client[1]}" if client else "tcp"


async def read_body(scope: dict[str, Any], receive: Receive, cap: int = MAX_BODY_BYTES) -> bytes:
    """The whole request body, or HttpError (413 past `cap` or the budget, 408 past the
    read timeout), or ClientGone."""
    rules: BodyRules | None = scope.get(BODY_RULES)
    declared = header(scope, b"content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    held = rules.budget.hold() if rules is not None and rules.budget is not None else None
    timeout = rules.timeout if rules is not None else None
    try:
        if size is not None and size > cap:
            outcome: bytes | HttpError = too_large(cap)
        elif held is not None and size is not None and not held.take(size):
            outcome = budget_full(held.budget)
        else:
            try:
                async with asyncio.timeout(timeout):
                    outcome = await _gather(receive, cap, held if size is None else None)
            except TimeoutError:
                outcome = timed_out(timeout or 0.0)
    finally:
        if held is not None:
            held.release()  # before a refusal's linger: a refused body holds nothing
    if isinstance(outcome, HttpError):
        await _refuse(scope, receive, rules, outcome)
    return outcome  # type: ignore[return-value]


async def _gather(receive: Receive, cap: int, held: Any) -> bytes | HttpError:
    """The body's bytes, taking each chunk from `held` first when it is given."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > cap:
            return too_large(cap)
        if held is not None and chunk and not held.take(len(chunk)):
            return budget_full(held.budget)
        body += chunk
        if not message.get("more_body", False):
            return bytes(body)


async def _refuse(scope: dict[str, Any], receive: Receive, rules: BodyRules | None, err: HttpError) -> None:
    """Log the refusal (throttled), let the rest of the body arrive unread, raise it."""
    if rules is not None:
        rules.refused(err.code or "refused", err.message)
    if err.status != 413 or header(scope, b"expect") != b"100-continue":
        await _discard(receive)  # it is on its way already: let it arrive, unread
    raise err


def too_large(cap: int) -> HttpError:
    return HttpError(413, f"request body exceeds {cap} bytes", code="request_too_large", headers=[CLOSE])


def budget_full(budget: ByteBudget) -> HttpError:
    return HttpError(413, f"the daemon already holds {budget.limit} bytes of unfinished requests (its buffer "
                     "budget, --buffer-budget-mib); retry shortly", code="buffer_budget_full",
                     headers=[CLOSE, (b"retry-after", str(RETRY_AFTER_SECS).encode())])


def timed_out(seconds: float) -> HttpError:
    return HttpError(408, f"request body not received within {seconds:g} s (--read-timeout-secs)",
                     code="request_timeout", headers=[CLOSE])


async def _discard(receive: Receive) -> None:
    try:
        async with asyncio.timeout(BODY_LINGER_SECS):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
    except TimeoutError:
        pass  # still sending: it gets the 413 and a closed connection


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (call once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Responder:
    """ASGI `send` for one response, bounded by the write timeout (F-17).

    `gone` turns true when the client left (or stalled past the timeout); every
    later write raises ConnectionResetError, which is how the pipeline hears of it.
    """

    __slots__ = ("_send", "_transport", "write_timeout", "extra_headers", "gone", "status", "route", "shape")

    def __init__(self, send: Send, transport: asyncio.Transport | None, write_timeout: float | None,
                 extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._send = send
        self._transport = transport
        self.write_timeout = write_timeout
        self.extra_headers = extra_headers or []
        self.gone = False
        self.status = 0  # 0 until the response has started
        self.route = "unknown"  # the route name, once known (a metrics label)
        #: A route whose wire has its own error shape (app.py ERROR_SHAPES) sets it: error -> (status, body).
        self.shape: Callable[[HttpError], tuple[int, bytes]] | None = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        await self._emit({"type": "http.response.start", "status": status, "headers": headers + self.extra_headers})

    async def body(self, data: bytes, more: bool = True) -> None:
        await self._emit({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, obj: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        await self.start(status, [JSON, (b"content-length", str(len(data)).encode()), *(headers or [])])
        await self.body(data, more=False)

    async def error(self, err: HttpError) -> None:
        status, data = self.shape(err) if self.shape is not None else (err.status, err.encode())
        await self.start(status, [JSON, (b"content-length", str(len(data)).encode()), *err.headers])
        await self.body(data, more=False)

    async def _emit(self, message: dict[str, Any]) -> None:
        if self.gone:
            raise ConnectionResetError("client went away")
        transport = self._transport
        if transport is None:
            await self._send(message)
            return
        try:
            ensure_open(transport)
            # uvicorn's send waits for a paused transport before it writes, so the check
            # comes first.
            if write_may_wait(transport):
                await bounded(self._send(message), transport, self.write_timeout)
            else:
                await self._send(message)
        except (ConnectionResetError, WriteTimeout):
            self.gone = True
            raise
