"""OpenAIBackend: generation and embeddings served by a remote OpenAI-compatible server.

vLLM, llama-server, llama-cpp-python's server or a hosted endpoint: anything that
speaks `/chat/completions` (streamed as SSE), `/completions`, `/embeddings` and
`/models`. HTTP is httpx's; this module owns the timeouts and the error mapping.

Failure model (engine/backend.py): everything up to and including the first chunk
that carries output is *pre-stream*, so `generate()` raises a BackendError and the
router may still try elsewhere. Once output flows, a stall past `idle_timeout`, a
dropped connection or an unreadable chunk makes the event stream raise, and the
daemon reports `backend_unavailable` after the partial output. Every await on the
network sits under a deadline; closing the event stream closes the HTTP response,
which is how a client's disconnect reaches the remote.

A remote that misbehaves (THREAT_MODEL F-23) ends the request it is serving, never
more, and never holds more than a bound: a line or event past 8 MiB (sse.py), a stream
past MAX_STREAM_BYTES or with more chunks than its `max_tokens` can explain
(`chunk_budget`, an endless stream), tool-call arguments past 8 MiB (wire.py), a drip
that does not complete an event within `idle_timeout`, headers followed by nothing
within `first_token_timeout`, a redirect (never followed: the request would carry the
key to another host) - each is `Unavailable` with a message saying which.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx

from ...proto.embed import EmbedResolved
from ...proto.framing import MAX_FRAME_BYTES
from ..backend import (
    Backend,
    BackendCapabilities,
    BackendError,
    BackendInvalidRequest,
    EmbedResult,
    NotReady,
    Unavailable,
    Unsupported,
)
from ..events import Event, Timings
from ..request import GenerationRequest
from .settings import OpenAISettings
from .sse import SSEDecoder, SSEError, SSEEvent
from .wire import (
    RemoteProtocolError,
    StreamState,
    chat_body,
    completion_body,
    error_status,
    remote_error_message,
)

log = logging.getLogger("inferd.engine.remote")

#: Error bodies are read only this far: enough for any server's message.
ERROR_BODY_BYTES = 64 * 1024
#: /models answers; a hosted catalogue of a few hundred models is well below.
MODELS_BODY_BYTES = 8 * 1024 * 1024
#: One embeddings answer: 2048 inputs of 4096 floats as JSON text is about 200 MB.
EMBED_BODY_BYTES = 256 * 1024 * 1024
#: A whole (non-streamed) chat answer from a server that ignored `stream: true`.
WHOLE_BODY_BYTES = 32 * 1024 * 1024
#: JSON larger than this is decoded off the event loop.
INLINE_JSON_BYTES = 1024 * 1024
#: One streamed answer, all its bytes: no reply can carry more than the frame cap anyway.
MAX_STREAM_BYTES = MAX_FRAME_BYTES
#: Chunks per asked-for token, and chunks beside them (role, usage, finish, keep-alive
#: objects), before a stream counts as endless: a server sends about one per token.
CHUNKS_PER_TOKEN = 4
SPARE_CHUNKS = 64
#: After `[DONE]`, how long we wait for the body's end so the connection can be reused.
DRAIN_SECONDS = 0.5
CLOSE_SECONDS = 2.0


class _HTTPUnavailable(Unavailable):
    """Unavailable because of the remote's HTTP status (kept for probe's 404 case)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _StreamFault(Exception):
    """Reading the stream failed; the message says how (for the Unavailable text)."""


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, settings: OpenAISettings) -> None:
        self.settings = settings
        #: Admission permits the daemon grants this backend; there is no queue in here.
        self.concurrency: int = settings.max_concurrency
        #: The model name sent upstream; resolved by probe() when the settings leave it open.
        self.model: str | None = settings.model
        self.label: str = settings.label or settings.model or settings.base_url
        self.n_ctx: int | None = None
        self._ready = False
        self._closed = False
        self._where = f"remote {settings.base_url}"
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ca_file {settings.ca_file}: {exc}") from None
        idle = settings.idle_timeout
        self._client = httpx.AsyncClient(
            verify=verify,
            # Our deadlines (asyncio.timeout) are the real bounds; httpx's read timeout
            # is only a backstop should one of ours be missed.
            timeout=httpx.Timeout(connect=settings.connect_timeout,
                                  read=max(settings.first_token_timeout, idle) + 5.0,
                                  write=settings.first_token_timeout,
                                  pool=settings.first_token_timeout),
            # The daemon admits `concurrency` requests; room for a probe beside them.
            limits=httpx.Limits(max_connections=self.concurrency + 2,
                                max_keepalive_connections=self.concurrency + 2),
            follow_redirects=False,
            headers={"User-Agent": "inferd"},
        )

    # ---- lifecycle ------------------------------------------------------------------

    def ready(self) -> bool:
        return self._ready and not self._closed

    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            v2=True,
            tools=True,  # OpenAI-compatible servers take `tools`; whether the model calls them is its business
            thinking=self.settings.thinking,
            embed=self.settings.embed,
            accelerator="remote",
            model=self.model,
            n_ctx=self.n_ctx,
        )

    async def probe(self) -> None:
        """GET {base}/models: reachable, key accepted, model served. Marks the backend ready.

        Raises Unavailable with the reason otherwise; the loader calls it again until
        it succeeds (publishing `loading_model` meanwhile), so it must stay quick.
        """
        if self._closed:
            raise Unavailable(f"{self._where}: backend stopped")
        s = self.settings
        headers = self._headers(stream=False)
        self._warn_cleartext_key(headers)
        budget = s.connect_timeout + s.idle_timeout
        deadline = asyncio.get_running_loop().time() + budget
        try:
            response = await self._send("GET", "/models", None, headers, deadline, "/models", budget)
        except _HTTPUnavailable as exc:
            if exc.status == 404 and s.model is not None:
                # Some gateways have no model list; the configured name must then do.
                log.warning("%s: no /models route; using model %r unverified", self._where, s.model)
                self.model = s.model
                self.n_ctx = None
                self._ready = True
                return
            raise
        payload = await self._read_json(response, deadline, budget, MODELS_BODY_BYTES, "/models")
        entries = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(entries, list):
            raise Unavailable(f"{self._where}: /models answered without a `data` list")
        models = [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
        if s.model is None:
            if not models:
                raise Unavailable(f"{self._where}: /models lists no model; set `model`")
            chosen = models[0]
        else:
            chosen = next((m for m in models if m["id"] == s.model), None)
            if chosen is None:
                served = ", ".join(m["id"] for m in models[:10]) or "none"
                more = f" and {len(models) - 10} more" if len(models) > 10 else ""
                raise Unavailable(f"{self._where} has no model {s.model!r} (it serves: {served}{more})")
        self.model = chosen["id"]
        self.n_ctx = _context_size(chosen)
        if s.label is None:
            self.label = self.model
        self._ready = True
        log.info("%s: model %s, n_ctx %s", self._where, self.model, self.n_ctx)

    async def stop(self, timeout: float) -> None:
        self._ready = False
        self._closed = True
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._client.aclose()
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            log.warning("%s: closing the HTTP client: %s", self._where, exc or type(exc).__name__)

    # ---- generation -----------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self._check_ready()
        s = self.settings
        assert self.model is not None
        if request.prompt is not None:
            path, body = "/completions", completion_body(request, self.model, s.sampling_extensions)
        else:
            path, body = "/chat/completions", chat_body(request, self.model, s.sampling_extensions)
        headers = self._headers(stream=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_deadline = started + s.first_token_timeout
        response = await self._send("POST", path, body, headers, first_deadline, path, s.first_token_timeout)
        tool_required = request.tool_name is not None or (request.tool_choice == "required" and bool(request.tools))
        state = StreamState()
        first: list[Event] = []
        if _media_type(response) == "application/json":
            # The server ignored `stream: true` and answered whole; relay it all the same.
            payload = await self._read_json(response, first_deadline, s.first_token_timeout, WHOLE_BODY_BYTES, path)
            self._raise_in_band(payload, pre_stream=True)
            try:
                first = state.feed(payload)
            except RemoteProtocolError as exc:
                raise Unavailable(f"{self._where}: unreadable answer: {exc}") from None
            if state.finish_reason is None:
                state.finish_reason = "stop"
            return _RemoteStream(self._relay(None, state, first, started, loop.time(), tool_required), None)
        stream = _EventReader(response, chunk_budget(request.max_tokens))
        try:
            while not (state.produced or state.finished):
                try:
                    chunk = await self._next_chunk(stream, first_deadline, pre_stream=True,
                                                   limit=f"{s.first_token_timeout:g} s (first_token_timeout)")
                except _StreamFault as fault:
                    raise Unavailable(f"{self._where}: {fault}") from None
                if chunk is None:
                    break  # [DONE] before any output: an empty answer, still a clean one
                try:
                    first = state.feed(chunk)
                except RemoteProtocolError as exc:
                    raise Unavailable(f"{self._where}: unreadable stream: {exc}") from None
        except BaseException:
            await stream.close()
            raise
        return _RemoteStream(self._relay(stream, state, first, started, loop.time(), tool_required), stream)

    async def _relay(self, stream: _EventReader | None, state: StreamState, first: list[Event],
                     started: float, first_output: float, tool_required: bool) -> AsyncGenerator[Event, None]:
        loop = asyncio.get_running_loop()
        idle = self.settings.idle_timeout
        try:
            for event in first:
                yield event
            while stream is not None and not stream.done:
                try:
                    chunk = await self._next_chunk(stream, loop.time() + idle, pre_stream=False,
                                                   limit=f"{idle:g} s (idle_timeout)")
                except _StreamFault as fault:
                    if state.finished:
                        # The answer was complete; only the usage chunk or [DONE] went missing.
                        log.debug("%s: stream ended untidily after finish: %s", self._where, fault)
                        break
                    raise Unavailable(f"{self._where}: {fault}") from None
                if chunk is None:
                    break  # [DONE]
                try:
                    events = state.feed(chunk)
                except RemoteProtocolError as exc:
                    raise Unavailable(f"{self._where}: unreadable stream: {exc}") from None
                for event in events:
                    yield event
            ended = loop.time()
            calls = state.tool_calls()
            for call in calls:
                yield call
            usage = state.usage_numbers()
            gen_s = max(ended - first_output, 0.0)
            timings = Timings(prompt_ms=(first_output - started) * 1000.0, generate_ms=gen_s * 1000.0,
                              tokens_per_second=usage.completion_tokens / gen_s if gen_s > 0 else 0.0)
            yield state.done(calls, timings, self.n_ctx, tool_required)
        finally:
            if stream is not None:
                await stream.close()

    async def _next_chunk(self, stream: _EventReader, deadline: float, pre_stream: bool, limit: str) -> Any:
        """The next JSON chunk, or None at `[DONE]`; `limit` names the deadline for messages."""
        event = await stream.next(deadline, limit)
        if event.event == "error":
            self._raise_in_band(_loads_or_text(event.data), pre_stream, always=True)
        data = event.data.strip()
        if data == "[DONE]":
            stream.done = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise _StreamFault(f"unreadable stream: data is not JSON: {_snippet(data)}") from None
        self._raise_in_band(chunk, pre_stream)
        return chunk

    def _raise_in_band(self, payload: Any, pre_stream: bool, always: bool = False) -> None:
        """An error object sent with HTTP 200 (in the SSE stream or as the whole body)."""
        if not always and not (isinstance(payload, dict) and "error" in payload and "choices" not in payload):
            return
        message = self._redact(remote_error_message(payload) or _snippet(str(payload)))
        status = error_status(payload)
        if pre_stream and status in (400, 413, 422):
            raise BackendInvalidRequest(f"remote rejected the request: {message}")
        if pre_stream:
            raise Unavailable(f"{self._where}: {message}")
        raise _StreamFault(f"remote error mid-stream: {message}")

    # ---- embeddings -----------------------------------------------------------------

    async def embed(self, request: EmbedResolved) -> EmbedResult:
        if not self.settings.embed:
            raise Unsupported("embeddings are turned off for this remote backend")
        self._check_ready()
        assert self.model is not None
        body: dict[str, Any] = {"model": self.model, "input": list(request.input), "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        headers = self._headers(stream=False)
        budget = self.settings.first_token_timeout
        deadline = asyncio.get_running_loop().time() + budget
        response = await self._send("POST", "/embeddings", body, headers, deadline, "/embeddings", budget)
        payload = await self._read_json(response, deadline, budget, EMBED_BODY_BYTES, "/embeddings")
        self._raise_in_band(payload, pre_stream=True)
        # Thousands of vectors (maybe per-token ones to pool) are CPU work: off the loop.
        return await asyncio.to_thread(self._embeddings, payload, len(request.input), request.dimensions)

    def _embeddings(self, payload: Any, count: int, dimensions: int | None) -> EmbedResult:
        bad = f"{self._where}: /embeddings answer is malformed"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != count:
            raise Unavailable(f"{bad}: expected {count} embeddings")
        rows: list[tuple[int, list[float]]] = []
        for position, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
                raise Unavailable(f"{bad}: entry {position} has no embedding list")
            index = item.get("index", position)
            vector = _vector(item["embedding"])
            if vector is None:
                raise Unavailable(f"{bad}: entry {position} is not a list of numbers")
            rows.append((index if isinstance(index, int) else position, vector))
        rows.sort(key=lambda r: r[0])
        if [r[0] for r in rows] != list(range(count)):
            rows = [(i, v) for i, (_, v) in enumerate(rows)]
        vectors = [v for _, v in rows]
        width = len(vectors[0]) if vectors else 0
        if width == 0 or any(len(v) != width for v in vectors):
            raise Unavailable(f"{bad}: vectors are empty or of unequal length")
        if dimensions is not None and width != dimensions:
            if width < dimensions:
                raise BackendInvalidRequest(f"dimensions {dimensions} exceeds the remote model's {width}")
            # The server ignored `dimensions`: truncate (Matryoshka) and re-normalise,
            # as the local backend does.
            vectors = [_l2_normalise(v[:dimensions]) for v in vectors]
            width = dimensions
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens", usage.get("total_tokens", 0))
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            tokens = 0
        return EmbedResult(embeddings=vectors, dimensions=width, model=self.model or "", input_tokens=tokens)

    # ---- HTTP -----------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.ready():
            raise NotReady()

    def _api_key(self) -> str | None:
        name = self.settings.api_key_env
        if name is None:
            return None
        value = os.environ.get(name, "").strip()
        if not value:
            raise Unavailable(f"{self._where}: environment variable {name} (api_key_env) is not set")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
            raise Unavailable(f"{self._where}: environment variable {name} does not hold a usable key")
        return value

    def _headers(self, stream: bool) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        key = self._api_key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        try:
            key = self._api_key()
        except Unavailable:
            key = None
        if key and key in text:
            text = text.replace(key, "***")
        return text

    def _warn_cleartext_key(self, headers: dict[str, str]) -> None:
        parts = urlsplit(self.settings.base_url)
        if "Authorization" not in headers or parts.scheme != "http":
            return
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            log.warning("%s: the API key from $%s travels unencrypted over http://",
                        self._where, self.settings.api_key_env)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str],
                    deadline: float, what: str, budget: float) -> httpx.Response:
        """Send and wait for the status line; raise the mapped BackendError unless 2xx."""
        content = None
        if body is not None:
            try:
                content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise BackendInvalidRequest(f"request cannot be encoded as JSON: {exc}") from None
            headers = {**headers, "Content-Type": "application/json"}
        try:
            request = self._client.build_request(method, self.settings.base_url + path,
                                                 content=content, headers=headers)
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise Unavailable(f"{self._where}: no answer to {what} within {budget:g} s") from None
        except (httpx.HTTPError, OSError) as exc:
            if self._closed:
                raise Unavailable(f"{self._where}: backend stopped") from None
            raise Unavailable(f"{self._where}: {_describe(exc, self.settings)}") from None
        if 200 <= response.status_code < 300:
            return response
        try:
            raw = await self._read_body(response, deadline, budget, ERROR_BODY_BYTES, truncate=True)
        except BackendError:
            raw = b""
        finally:
            await _close_response(response)
        self._status_error(response.status_code, raw, what, response.headers.get("location", ""))

    def _status_error(self, status: int, raw: bytes, what: str, location: str = "") -> NoReturn:
        text = raw.decode("utf-8", "replace")
        message = self._redact(remote_error_message(_loads_or_text(text)) or _snippet(text) or "no message")
        if status in (401, 403):
            # Never echo the remote's words here: some repeat the key they were given.
            name = self.settings.api_key_env
            if name is None:
                raise Unavailable(f"{self._where}: HTTP {status}: the remote wants an API key; "
                                  "set api_key_env to the name of an environment variable holding it")
            raise Unavailable(f"{self._where}: HTTP {status}: the API key from ${name} was refused")
        if status in (400, 413, 422):
            raise BackendInvalidRequest(f"remote rejected the request (HTTP {status}): {message}")
        if 300 <= status < 400:
            # F-23: never followed (follow_redirects=False): the request, key included,
            # would go to wherever the remote says. Name the host, not the whole URL.
            target = urlsplit(location).netloc or "this host" if location else "nowhere"
            raise _HTTPUnavailable(f"{self._where}: HTTP {status} for {what}: the remote redirects to {target}; "
                                   "redirects are not followed (set base_url to the final address)", status)
        raise _HTTPUnavailable(f"{self._where}: HTTP {status} for {what}: {message}", status)

    async def _read_body(self, response: httpx.Response, deadline: float, budget: float, limit: int,
                         truncate: bool = False) -> bytes:
        chunks = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                async for part in response.aiter_bytes():
                    chunks += part
                    if len(chunks) > limit:
                        if truncate:
                            return bytes(chunks[:limit])
                        raise Unavailable(f"{self._where}: answer larger than {limit} bytes")
        except TimeoutError:
            raise Unavailable(f"{self._where}: answer not complete within {budget:g} s") from None
        except (httpx.HTTPError, OSError) as exc:
            raise Unavailable(f"{self._where}: reading the answer: {_describe(exc, self.settings)}") from None
        return bytes(chunks)

    async def _read_json(self, response: httpx.Response, deadline: float, budget: float, limit: int,
                         what: str) -> Any:
        try:
            raw = await self._read_body(response, deadline, budget, limit)
        finally:
            await _close_response(response)
        try:
            if len(raw) > INLINE_JSON_BYTES:
                return await asyncio.to_thread(json.loads, raw)
            return json.loads(raw)
        except ValueError:
            raise Unavailable(f"{self._where}: {what} answer is not JSON: {_snippet(raw.decode('utf-8', 'replace'))}") \
                from None


class _RemoteStream:
    """What generate() returns: the relay, plus an aclose() that closes the HTTP response
    even when no event was ever asked for (a generator that never started would not)."""

    def __init__(self, relay: AsyncGenerator[Event, None], reader: _EventReader | None) -> None:
        self._relay = relay
        self._reader = reader

    def __aiter__(self) -> _RemoteStream:
        return self

    async def __anext__(self) -> Event:
        return await self._relay.__anext__()

    async def aclose(self) -> None:
        try:
            await self._relay.aclose()
        finally:
            if self._reader is not None:
                await self._reader.close()


def chunk_budget(max_tokens: int) -> int:
    """Events one answer of `max_tokens` may take before its stream counts as endless."""
    return CHUNKS_PER_TOKEN * max(max_tokens, 0) + SPARE_CHUNKS


class _EventReader:
    """SSE events off one streamed response, each read under the caller's deadline, the
    whole within MAX_STREAM_BYTES and `max_events` (F-23)."""

    def __init__(self, response: httpx.Response, max_events: int | None = None) -> None:
        self.response = response
        self.max_events = max_events
        self.events = 0
        self.received = 0
        self.done = False  # [DONE] seen
        self._bytes = response.aiter_bytes()
        self._decoder = SSEDecoder()
        self._pending: deque[SSEEvent] = deque()
        self._eof = False
        self._closed = False

    async def next(self, deadline: float, limit: str) -> SSEEvent:
        while not self._pending:
            if self._eof:
                raise _StreamFault("connection closed before the end of the stream")
            try:
                async with asyncio.timeout_at(deadline):
                    part = await anext(self._bytes, None)
            except TimeoutError:
                raise _StreamFault(f"stalled: no output within {limit}") from None
            except (httpx.HTTPError, OSError) as exc:
                raise _StreamFault(f"connection lost: {exc or type(exc).__name__}") from None
            try:
                if part is None:
                    self._eof = True
                    self._pending.extend(self._decoder.close())
                else:
                    self.received += len(part)
                    if self.received > MAX_STREAM_BYTES:
                        raise _StreamFault(f"the answer exceeds {MAX_STREAM_BYTES} bytes (MAX_STREAM_BYTES)")
                    self._pending.extend(self._decoder.feed(part))
            except SSEError as exc:
                raise _StreamFault(f"unreadable stream: {exc}") from None
        self.events += 1
        if self.max_events is not None and self.events > self.max_events:
            raise _StreamFault(f"the remote sent more than {self.max_events} chunks, more than max_tokens "
                               "explains: an endless stream")
        return self._pending.popleft()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.done and not self._eof:
            # Read the body's end so the connection goes back to the pool.
            try:
                async with asyncio.timeout(DRAIN_SECONDS):
                    async for _ in self._bytes:
                        pass
            except (TimeoutError, httpx.HTTPError, OSError):
                pass
        await _close_response(self.response)


async def _close_response(response: httpx.Response) -> None:
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await response.aclose()
    except (TimeoutError, httpx.HTTPError, OSError) as exc:
        log.debug("closing a remote response: %s", exc or type(exc).__name__)


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _context_size(entry: dict[str, Any]) -> int | None:
    candidates = [entry.get("max_model_len")]  # vLLM
    meta = entry.get("meta")
    if isinstance(meta, dict):
        candidates += [meta.get("n_ctx"), meta.get("n_ctx_train")]  # llama-server
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _describe(exc: BaseException, settings: OpenAISettings) -> str:
    """A short reason for a transport failure: what an operator can act on."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {settings.connect_timeout:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for link in chain:
        if isinstance(link, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {link.verify_message or link}"
        if isinstance(link, ssl.SSLError):
            return f"TLS failed: {link.reason or link}"
        if isinstance(link, socket.gaierror):
            return f"cannot resolve host {urlsplit(settings.base_url).hostname}"
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
    text = str(exc)
    if isinstance(exc, httpx.ConnectError):
        if "SSL" in text or "certificate" in text:
            return f"TLS failed: {text}"
        if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
            return f"cannot resolve host {urlsplit(settings.base_url).hostname}"
        if "refused" in text.lower():
            return "connection refused"
        return f"cannot connect: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _loads_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _vector(raw: list[Any]) -> list[float] | None:
    """One embedding; a list of per-token vectors is mean-pooled (then L2-normalised).

    A server whose model has no pooling (llama-cpp-python's server on a causal LM)
    answers one vector per token; mean pooling is what the local backend applies.
    """
    if raw and all(isinstance(t, list) for t in raw):
        width = len(raw[0])
        if width == 0 or any(len(t) != width or not all(_is_number(x) for x in t) for t in raw):
            return None
        return _l2_normalise([sum(t[k] for t in raw) / len(raw) for k in range(width)])
    if not all(_is_number(x) for x in raw):
        return None
    return [float(x) for x in raw]


def _l2_normalise(v: list[float]) -> list[float]:
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v] if norm > 0 else v


__all__ = ["OpenAIBackend"]
