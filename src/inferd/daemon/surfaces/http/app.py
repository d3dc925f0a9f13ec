"""The OpenAI-compatible routes, as one plain ASGI application (docs/http.md).

    POST /v1/chat/completions   POST /v1/completions   POST /v1/embeddings
    POST /v1/responses (responses.py)   POST /v1/messages (Anthropic's, anthropic.py)
    GET  /v1/models[/{id}]      GET  /health           GET  /metrics

(each /v1 route also answers without the /v1 prefix, as llama-server's do). A route
decodes the body into the engine's request, hands it to the one request pipeline
(pipeline/run.py) with a sink from encode.py, and writes what the sink made of the
events: admission, routing, cancellation and accounting are the pipeline's, never
this file's. A client that disconnects while its generation is queued or running
has the pipeline call cancelled, which releases its admission slot and closes the
engine stream (the generation stops); a write to a gone client raises
ConnectionError from the sink, which does the same.

Who may talk to it (THREAT_MODEL F-20): the listener is loopback only (F-8); with an
API key every route but /health needs `Authorization: Bearer KEY` or Anthropic's
`x-api-key: KEY` (constant-time compare); a request whose Host is not a loopback name (DNS rebinding) or whose Origin
is a web page off this machine (a browser's cross-site request) is refused with 403.
Host and Origin are parsed whole (`host_of`, `origin_host`): a bracketed address with
anything after it, userinfo, a path, or a second Origin header is refused. A request
with both Content-Length and Transfer-Encoding is 400 and closes the connection
(request smuggling). Refusals are logged through the daemon's one throttle (F-4).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from ....engine.request import GenerationRequest
from ....proto.auth import keys_match
from ....proto.v1 import DEFAULT_MAX_TOKENS
from ...context import DaemonContext
from ...net.buffers import ByteBudget
from ...observe.activity import ActivityLog, NullActivityLog
from ...observe.throttle import Throttle, log_refusal
from ...observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ...pipeline import policy, run
from ...pipeline.router import BackendEntry, Needs
from . import anthropic, decode, responses
from .anthropic_encode import MessagesCollect, MessagesStream
from .responses_encode import ResponsesCollect, ResponsesStream
from .encode import ChatCollect, ChatStream, CompletionCollect, CompletionStream, Meta
from .errors import HttpError, invalid
from .io import (BODY_RULES, CLOSE, BodyRules, ClientGone, HttpPeer, Receive, Responder, Send, header, peer_label,
                 read_body, wait_disconnect)
from . import ollama

#: The open connections by client address (`scope["client"]`), kept by the server glue:
#: the write bound aborts a stalled one (F-17), which ASGI cannot ask for, and a request
#: tells its connection when it starts and ends (the head deadline, the pending pool).
Connections = dict[tuple[str, int], HttpPeer]

#: The route table: path -> (method, route name). Route names label the metrics.
ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/completions": ("POST", "completions"),
    "/v1/embeddings": ("POST", "embeddings"),
    "/v1/responses": ("POST", "responses"),
    "/v1/messages": ("POST", "messages"),
    "/v1/models": ("GET", "models"),
    "/health": ("GET", "health"),
    "/metrics": ("GET", "metrics"),
    **ollama.ROUTES,  # Ollama's API (ADR 0027)
}
#: Routes whose wire has its own error shape, and that shape: an HttpError -> (status,
#: body). Every other route answers in OpenAI's (HttpError.encode). The one place an
#: error's shape is chosen: Responder.error, by the route `_route_of` names.
ERROR_SHAPES: dict[str, Callable[[HttpError], tuple[int, bytes]]] = {
    "messages": anthropic.error_shape,
    **dict.fromkeys([route for _, route in ollama.ROUTES.values()] + [ollama.NOT_FOUND], ollama.error_shape),
}
#: The scope key saying this request called HttpPeer.begin (so its end is due).
BEGUN = "inferd.begun"
#: Header fields one request may carry. h11 bounds a head that arrives in pieces to
#: 16 KiB, but parses a head that arrives in one read whole (up to 256 KiB, ~30,000
#: fields); no client needs more than a few dozen.
MAX_HEADERS = 256
PUBLIC_ROUTES = frozenset({"health"}) | ollama.PUBLIC  # no API key needed: it says "up" and nothing else
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def _is_loopback_host(host: str) -> bool:
    host = host.lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(authority: str) -> str | None:
    """The host of `host[:port]` or `[v6]:port`, or None when it is anything else.

    F-20: `[::1].evil.com` is not a bracketed address with a port, so it is None (the
    old reading took the brackets and dropped the rest)."""
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = (authority[1:end], authority[end + 1:]) if end > 0 else ("", "x")
    elif authority.count(":") > 1:
        return None  # an IPv6 address must be bracketed here
    else:
        host, colon, port = authority.partition(":")
        rest = colon + port
    if rest and not (rest[0] == ":" and rest[1:].isdigit() and rest[1:].isascii()):
        return None
    if not host or any(c in host for c in "@/\\?#[] "):
        return None
    return host


def origin_host(origin: str) -> str | None:
    """The host of an Origin (`scheme://host[:port]`, exactly: no userinfo, path or
    query, as browsers send it), or None. `http://evil.com@127.0.0.1` is None."""
    scheme, sep, authority = origin.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    return host_of(authority)


def _loopback_header(value: bytes, parse: Callable[[str], str | None]) -> bool:
    host = parse(value.decode("latin-1").strip())
    return host is not None and _is_loopback_host(host)


class HttpApp:
    """The ASGI application of one daemon's HTTP listener."""

    def __init__(self, ctx: DaemonContext, *, api_key: str | None, write_timeout: float | None,
                 activity: ActivityLog | NullActivityLog, connections: Connections,
                 refusals: Throttle | None = None, read_timeout: float | None = None,
                 budget: ByteBudget | None = None) -> None:
        self.ctx = ctx
        self.connections = connections
        self.api_key = api_key or None
        self.write_timeout = write_timeout
        self.activity = activity
        self.refusals = refusals or Throttle()
        self.read_timeout = read_timeout
        self.budget = budget
        self.created = int(time.time())
        self._handlers: dict[str, Callable[[dict[str, Any], Receive, Responder], Awaitable[None]]] = {
            "chat": self._chat, "completions": self._completions, "embeddings": self._embeddings,
            "responses": self._responses, "messages": self._messages, "models": self._models, "model": self._model,
            "health": self._health, "metrics": self._metrics,
        }
        self._handlers.update(ollama.OllamaRoutes(self).handlers())

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets are off in the server config
        client = scope.get("client")
        peer = self.connections.get(tuple(client)) if client else None
        out = Responder(send, peer.transport if peer is not None else None, self.write_timeout)
        # F-22: every route that reads a body reads it under these.
        scope[BODY_RULES] = BodyRules(self.read_timeout, self.budget,
                                      lambda name, message: self._refused(scope, name, message))
        try:
            await self._dispatch(scope, receive, out, peer)
        except HttpError as err:
            if not out.status and not out.gone:
                await self._answer_error(out, err)
        except ClientGone:
            pass
        except (ConnectionError, OSError):
            pass  # the client left or stalled (F-17); the pipeline has let go of everything
        finally:
            self.ctx.metrics.http_response(out.route, out.status)
            if peer is not None and scope.get(BEGUN):
                peer.end()

    def _refused(self, scope: dict[str, Any], name: str, message: str) -> None:
        """Log a refusal through the one throttle (F-4): at most one record per kind per interval."""
        log_refusal(self.refusals, self.activity.logger, name, message, surface="http", peer=peer_label(scope))

    async def _answer_error(self, out: Responder, err: HttpError) -> None:
        try:
            await out.error(err)
        except (ConnectionError, OSError):
            pass

    # ---- who may ask, and what -----------------------------------------------------

    async def _dispatch(self, scope: dict[str, Any], receive: Receive, out: Responder,
                        peer: HttpPeer | None) -> None:
        method, route = _route_of(scope["path"])
        out.shape = ERROR_SHAPES.get(route)  # before the first check: every refusal is in the route's shape
        headers = scope["headers"]
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, f"a request may carry at most {MAX_HEADERS} header fields",
                            code="too_many_headers", headers=[CLOSE])
        if header(scope, b"transfer-encoding") is not None and header(scope, b"content-length") is not None:
            # Request smuggling: which of the two frames the body is a matter of opinion
            # between parsers; refuse, and close (RFC 9112 6.1). Conflicting lengths are
            # h11's 400 already; identical repeats it merges into one (RFC 9112 6.3).
            raise HttpError(400, "a request may not carry both Content-Length and Transfer-Encoding",
                            code="ambiguous_length", headers=[CLOSE])
        host = header(scope, b"host")
        if host is not None and not _loopback_header(host, host_of):
            # F-20: a page whose name was rebound to 127.0.0.1 sends its own name here.
            raise HttpError(403, "the Host header must name this machine (localhost or a loopback address)",
                            "permission_error", "forbidden_host")
        origins = [value for key, value in headers if key == b"origin"]
        if origins:
            if len(origins) > 1 or not _loopback_header(origins[0], origin_host):
                # F-20: a web page elsewhere may not drive the user's model through their
                # browser; a browser sends one Origin, so two are refused, not picked from.
                raise HttpError(403, "cross-origin requests are accepted from loopback origins only "
                                "(one Origin header)", "permission_error", "forbidden_origin")
            origin = origins[0]
            out.extra_headers += [(b"access-control-allow-origin", origin), (b"vary", b"origin")]
            if scope["method"] == "OPTIONS":
                out.route = "preflight"
                await self._preflight(scope, out)
                return
        out.route = route
        if self.api_key and route not in PUBLIC_ROUTES:
            self._authenticate(scope, peer)
        if peer is not None:
            scope[BEGUN] = True  # __call__ ends what began, and only that
        if peer is not None and not peer.begin(authorized=not self.api_key or route not in PUBLIC_ROUTES):
            raise HttpError(503, "too many HTTP connections are open (--max-connections); retry shortly",
                            "server_error", "connection_limit", headers=[CLOSE])
        if route in ("not_found", ollama.NOT_FOUND):
            raise HttpError(404, f"no route {scope['method']} {scope['path']}", "not_found_error", "not_found")
        if scope["method"] != method and not (method == "GET" and scope["method"] == "HEAD"):
            raise HttpError(405, f"{scope['path']} takes {method}", "invalid_request_error", "method_not_allowed",
                            headers=[(b"allow", method.encode())])
        await self._handlers[route](scope, receive, out)

    def _authenticate(self, scope: dict[str, Any], peer: HttpPeer | None) -> None:
        assert self.api_key is not None
        value = header(scope, b"authorization") or b""
        scheme, _, presented = value.decode("latin-1").partition(" ")
        # F-8/F-20: constant-time compare, like the TCP auth frame.
        if scheme.lower() == "bearer" and keys_match(presented.strip(), self.api_key):
            return
        # F-20: Anthropic's SDK sends its key as x-api-key; the same constant-time compare.
        anthropic_key = header(scope, b"x-api-key")
        if anthropic_key is not None and keys_match(anthropic_key.decode("latin-1").strip(), self.api_key):
            return
        # Issue 19 item 3: one record per interval, however many keyless requests come.
        self._refused(scope, "auth_refused", "refusing an http request: invalid or missing API key")
        # A connection that has never been authorized is closed after its 401: a
        # guesser pays a connection per guess, and leaves the pending pool.
        close = [CLOSE] if peer is not None and peer.pending else []
        raise HttpError(401, "invalid or missing API key (send Authorization: Bearer KEY)", "authentication_error",
                        "invalid_api_key", headers=[(b"www-authenticate", b"Bearer"), *close])

    async def _preflight(self, scope: dict[str, Any], out: Responder) -> None:
        asked = header(scope, b"access-control-request-headers") or b"authorization, content-type"
        await out.start(204, [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                              (b"access-control-allow-headers", asked), (b"access-control-max-age", b"600")])
        await out.body(b"", more=False)

    # ---- generation --------------------------------------------------------------------

    @staticmethod
    def model_name(entry: BackendEntry) -> str:
        return entry.caps.model or entry.label

    async def _chat(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        req = decode.parse(decode.ChatRequest, await read_body(scope, receive))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        greq = decode.chat_request(req, rid)
        # The model is named by _ServedBy, once the pipeline knows which backend serves.
        meta = Meta(rid, int(time.time()), "", bool(req.stream_options and req.stream_options.include_usage))
        # Without max_tokens an answer may run to the end of the context, as on OpenAI:
        # the context of the backend that serves it, known once the pipeline picks it.
        sized = decode.max_tokens_asked(req) is None
        serving = _ServedBy(meta, greq, sized)
        needs = _needs(req, tools=bool(req.tools))
        await self._answer(scope, receive, out, serving, needs,
                           ChatStream(out, meta) if req.stream else None, ChatCollect(), meta, req.return_progress)

    async def _completions(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        req = decode.parse(decode.CompletionRequest, await read_body(scope, receive))
        rid = f"cmpl-{uuid.uuid4().hex}"
        greq = decode.completion_request(req, rid)
        # The model is named by _ServedBy, once the pipeline knows which backend serves.
        meta = Meta(rid, int(time.time()), "", bool(req.stream_options and req.stream_options.include_usage))
        serving = _ServedBy(meta, greq, False)
        echo = (greq.prompt or "") if req.echo else ""
        needs = _needs(req)
        streamed = CompletionStream(out, meta, echo) if req.stream else None
        await self._answer(scope, receive, out, serving, needs, streamed, CompletionCollect(echo), meta,
                           req.return_progress)

    async def _responses(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        req = decode.parse(responses.ResponsesRequest, await read_body(scope, receive))
        rid = f"resp_{uuid.uuid4().hex}"
        greq = responses.responses_request(req, rid)
        meta = Meta(rid, int(time.time()), "")
        serving = _ServedBy(meta, greq, req.max_output_tokens is None)
        needs = _needs(req, tools=bool(greq.tools))
        echo = responses.echo(req, greq)
        await self._answer(scope, receive, out, serving, needs,
                           ResponsesStream(out, meta, echo) if req.stream else None, ResponsesCollect(meta, echo), meta)

    async def _messages(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        req = decode.parse(anthropic.MessagesRequest, await read_body(scope, receive))
        rid = f"msg_{uuid.uuid4().hex}"
        greq = anthropic.messages_request(req, rid)
        meta = Meta(rid, int(time.time()), "")
        serving = _ServedBy(meta, greq, False)
        needs = _needs(req, tools=bool(greq.tools))
        await self._answer(scope, receive, out, serving, needs,
                           MessagesStream(out, meta) if req.stream else None, MessagesCollect(), meta)

    async def _answer(self, scope: dict[str, Any], receive: Receive, out: Responder, serving: "_ServedBy",
                      needs: Needs, streamed: Any, whole: Any, meta: Meta, progress: bool = False) -> None:
        """One generation: into `streamed` when the client asked for a stream (with
        progress chunks if it asked for those too: `streamed` is their run.Progress), else
        collected into `whole` and answered in one body."""
        if streamed is not None:
            await self.stream(scope, receive, out, serving, needs, streamed, progress)
        else:
            await self.generate(scope, receive, out, serving, needs, whole)
            await self.whole(out, whole, meta)

    async def stream(self, scope: dict[str, Any], receive: Receive, out: Responder, serving: "_ServedBy",
                     needs: Needs, sink: Any, progress: bool = False) -> None:
        await self.generate(scope, receive, out, serving, needs, sink, sink if progress else None)
        if sink.error is not None and not out.gone:
            raise sink.error  # the backend failed before the sink wrote its first chunk: a real status

    async def whole(self, out: Responder, sink: Any, meta: Meta) -> None:
        if out.gone:
            return
        if sink.error is not None:
            raise sink.error
        await out.json(200, sink.body(meta))

    async def generate(self, scope: dict[str, Any], receive: Receive, out: Responder, serving: "_ServedBy",
                       needs: Needs, sink: Any, progress: Any = None) -> None:
        """Run the pipeline while watching for the client to leave; if it does, cancel
        the pipeline call (queued, prefilling or decoding: the slot is freed and the
        engine stream closed by the pipeline's own cleanup). A refusal before the
        stream is an HTTP status."""
        pipeline = asyncio.ensure_future(
            run.generate(self.ctx, serving.request, sink, surface="http", needs=needs, peer=peer_label(scope),
                         serving=serving, progress=progress))
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait((pipeline, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pipeline.done():
                out.gone = True
                pipeline.cancel()
                await asyncio.wait((pipeline,))
        if pipeline.cancelled():
            return
        exc = pipeline.exception()
        if isinstance(exc, (ConnectionError, OSError)):
            out.gone = True
        elif exc is not None:
            raise exc
        refused = pipeline.result()
        if refused is not None:
            if out.status and not out.gone:
                # The stream began (progress chunks, or evicted past a drain deadline on
                # SIGTERM or SIGHUP after its status went out): its own error event says it.
                await sink.fail(refused.kind, refused.message)
                return
            raise HttpError.from_fault(refused.kind, refused.message)

    # ---- embeddings ----------------------------------------------------------------------

    async def _embeddings(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        req = decode.parse(decode.EmbeddingsRequest, await read_body(scope, receive))
        keep_alive = _needs(req).keep_alive
        if not self.ctx.models.can_embed:
            raise HttpError(501, "no backend here serves embeddings: start the daemon with --llamacpp-embed, "
                            'or set "embed": true on a backend in the config', "not_supported_error",
                            "embed_unsupported")
        resolved = decode.embed_request(req, f"embd-{uuid.uuid4().hex}")
        try:
            _, result = await run.embed(self.ctx, resolved, surface="http", peer=peer_label(scope),
                                        keep_alive=keep_alive)
        except run.Refused as exc:
            raise HttpError.from_fault(exc.kind, exc.message) from None
        as_base64 = req.encoding_format == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": _base64(vector) if as_base64 else vector}
                for i, vector in enumerate(result.embeddings)]
        await out.json(200, {"object": "list", "data": data, "model": result.model,
                             "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens}})

    # ---- the rest ------------------------------------------------------------------------

    def _model_cards(self) -> list[dict[str, Any]]:
        """Every configured model, loaded or not (issue 20): its id is the name a request
        gives; `loaded`, `aliases` and, once loaded, what it can do."""
        models = self.ctx.models.catalog.models
        if not models:  # a bare router (no catalog): what is loaded
            return [self._card(self.model_name(e), e, []) for e in self.ctx.router.entries]
        return [self._card(m.name, m.loaded, [n for n in m.names if n != m.name]) for m in models]

    def _card(self, name: str, entry: BackendEntry | None, aliases: list[str]) -> dict[str, Any]:
        card: dict[str, Any] = {"id": name, "object": "model", "created": self.created, "owned_by": "inferd",
                                "aliases": aliases, "loaded": entry is not None}
        if entry is not None:
            card.update({"backend": entry.label, "n_ctx": entry.caps.n_ctx,
                         "capabilities": {"tools": entry.caps.tools, "thinking": entry.caps.thinking,
                                          "embed": entry.caps.embed}})
        return card

    async def _models(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        await out.json(200, {"object": "list", "data": self._model_cards()})

    async def _model(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        wanted = scope["path"].split("/models/", 1)[1]
        for card in self._model_cards():
            if card["id"] == wanted or wanted in card["aliases"]:
                await out.json(200, card)
                return
        raise HttpError(404, f"no model {wanted!r} here", "not_found_error", "model_not_found", "model")

    async def _health(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        state = getattr(self.ctx.broadcaster.snapshot, "status", "unknown")
        # Ready with a model loaded, or one a request would load (issue 20: on demand).
        ok = state == "ready" and (self.ctx.router.first_ready() is not None
                                   or any(m.loadable for m in self.ctx.models.catalog.models))
        await out.json(200 if ok else 503, {"status": "ok" if ok else "unavailable", "state": state})

    async def _metrics(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        data = self.ctx.metrics.exposition()
        await out.start(200, [(b"content-type", METRICS_CONTENT_TYPE.encode()),
                              (b"content-length", str(len(data)).encode())])
        await out.body(data, more=False)


class _ServedBy:
    """Told by the pipeline which backend serves, before its first event: the answer
    names that backend's model, and a request without max_tokens gets its context."""

    __slots__ = ("meta", "request", "sized")

    def __init__(self, meta: Meta, request: GenerationRequest, sized: bool) -> None:
        self.meta = meta
        self.request = request
        self.sized = sized

    def __call__(self, entry: BackendEntry) -> GenerationRequest:
        self.meta.model = HttpApp.model_name(entry)
        if not self.sized:
            return self.request
        return replace(self.request, max_tokens=entry.caps.n_ctx or DEFAULT_MAX_TOKENS)


def _route_of(path: str) -> tuple[str, str]:
    """(method, route name) of a path; each /v1 route also answers without the prefix."""
    if path not in ROUTES and f"/v1{path}" in ROUTES and path not in ("/health", "/metrics"):
        path = f"/v1{path}"
    if path in ROUTES:
        return ROUTES[path]
    if path.startswith(("/v1/models/", "/models/")):
        return "GET", "model"
    if path.startswith(ollama.PREFIX):
        return "", ollama.NOT_FOUND
    return "", "not_found"


def _needs(req: Any, **needs: Any) -> Needs:
    """The model the body names (OpenAI's `model`) and its keep_alive, for routing."""
    try:
        return policy.model_needs(req.model, getattr(req, "keep_alive", None), **needs)
    except policy.InvalidCombination as exc:
        raise invalid(exc.message, exc.param) from None


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the little-endian float32 array."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")

