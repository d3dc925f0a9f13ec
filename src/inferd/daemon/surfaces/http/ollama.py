"""Ollama's API on the HTTP listener (docs/http.md, ADR 0027).

    POST /api/chat   POST /api/generate   POST /api/embed   POST /api/embeddings
    GET  /api/tags   GET  /api/ps         POST /api/show    GET  /api/version
    GET|HEAD /       ("Ollama is running")

Same listener, same checks as the OpenAI routes (app.py: loopback Host and Origin,
F-20; `--api-key` Bearer on every route but `/`), same pipeline (pipeline/run.py,
through HttpApp.generate: admission, cancellation on disconnect, metrics, the
activity log). Bodies are decoded by ollama_decode.py, answers encoded by
ollama_encode.py; every error on an Ollama path is `{"error": "message"}`.

The models these routes list come from ONE function, `model_cards`, which reads the
router's entries today; the models-by-name registry (issue 20) replaces it there.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .... import __version__
from ....engine.request import GenerationRequest
from ....proto.v1 import DEFAULT_MAX_TOKENS
from ...context import DaemonContext
from ...pipeline import run
from ...pipeline.router import BackendEntry, Needs
from . import ollama_decode as od
from .decode import parse
from .errors import HttpError
from .io import Receive, Responder, peer_label, read_body
from .ollama_encode import OllamaCollect, OllamaError, OllamaMeta, OllamaStream, loaded

if TYPE_CHECKING:
    from .app import HttpApp

#: The Ollama API version these routes follow (its `/api/version`): the first release
#: with everything served here (streamed tool calls, `think`, `dimensions`). Clients
#: gate features on it; inferd's own version is beside it (ADR 0027).
OLLAMA_API_VERSION = "0.12.0"

ROUTES: dict[str, tuple[str, str]] = {
    "/api/chat": ("POST", "ollama_chat"),
    "/api/generate": ("POST", "ollama_generate"),
    "/api/embed": ("POST", "ollama_embed"),
    "/api/embeddings": ("POST", "ollama_embeddings"),
    "/api/tags": ("GET", "ollama_tags"),
    "/api/ps": ("GET", "ollama_ps"),
    "/api/show": ("POST", "ollama_show"),
    "/api/version": ("GET", "ollama_version"),
    "/": ("GET", "ollama_root"),
}
#: `/` says "Ollama is running" and nothing else, like /health: no key needed.
PUBLIC = frozenset({"ollama_root"})
#: The route of a path under /api/ that is none of the above: a 404 in Ollama's shape.
NOT_FOUND = "ollama_not_found"
PREFIX = "/api/"

Handler = Callable[[dict[str, Any], Receive, Responder], Awaitable[None]]


def error_shape(err: HttpError) -> tuple[int, bytes]:
    """An error in Ollama's shape and status (`{"error": "message"}`): the error shape
    of every Ollama route (app.py's ERROR_SHAPES)."""
    shaped = OllamaError.of(err)
    return shaped.status, shaped.encode()


# ---- the models these routes know --------------------------------------------------

@dataclass(frozen=True, slots=True)
class ModelCard:
    """One model as Ollama's listings describe it."""

    name: str
    #: The backend serving it; None while the model is configured but not loaded.
    entry: BackendEntry | None
    path: str | None
    size: int
    modified: float
    #: Wall-clock time when an idle model is unloaded (issue 20); None: not counting down.
    expires_at: float | None = None
    #: Configured for embeddings (known before it loads).
    embeds: bool = False

    @property
    def capabilities(self) -> list[str]:
        if self.entry is None:  # what the config says; the rest is known once loaded
            return ["completion"] + (["embedding"] if self.embeds else [])
        caps = self.entry.caps  # every backend here generates
        return ["completion"] + [name for name, has in (("tools", caps.tools), ("thinking", caps.thinking),
                                                         ("vision", caps.vision), ("embedding", caps.embed)) if has]

    @property
    def digest(self) -> str:
        """Not a content hash (hashing gigabytes per listing is not worth it): a stable
        id of this file at this size and time, in Ollama's hex form."""
        return hashlib.sha256(f"{self.path}\0{self.size}\0{self.modified}\0{self.name}".encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        quant = ""
        if self.path:
            stem = os.path.basename(self.path).rsplit(".", 1)[0]
            quant = stem.rsplit("-", 1)[-1].rsplit(".", 1)[-1].upper() if "-" in stem or "." in stem else ""
        return {"parent_model": "", "format": "gguf" if self.path else "", "family": "", "families": None,
                "parameter_size": "", "quantization_level": quant}


def _entry_path(entry: BackendEntry) -> str | None:
    settings = getattr(entry.backend, "settings", None)
    path = getattr(settings, "source_path", None) or getattr(settings, "model_path", None)
    return str(path) if path else None


def model_cards(ctx: DaemonContext) -> list[ModelCard]:
    """Every configured model, loaded or not (the models catalog, issue 20); a bare
    router without a catalog lists what it has loaded. The one place these routes
    learn of models."""
    models = ctx.models.catalog.models
    if not models:
        return [_card(e.caps.model or e.label, e, _entry_path(e)) for e in ctx.router.entries]
    now, loop_now = time.time(), asyncio.get_running_loop().time()
    return [_card(m.name, m.loaded, _entry_path(m.loaded) if m.loaded else _configured_path(m.entry),
                  expires_at=None if m.expires_at is None else now + (m.expires_at - loop_now),
                  embeds=m.can_embed)
            for m in models]


def _configured_path(entry: Any) -> str | None:
    path = getattr(entry, "model_path", None)
    return str(path) if path else None


def _card(name: str, entry: BackendEntry | None, path: str | None, **extra: Any) -> ModelCard:
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return ModelCard(name, entry, path, st.st_size if st else 0, st.st_mtime if st else time.time(), **extra)


def find_card(ctx: DaemonContext, name: str) -> ModelCard | None:
    """By the name a request gives (the models catalog's rules, Ollama's implied
    `:latest` tag included)."""
    models = ctx.models.catalog.lookup(name) if ctx.models.catalog.models else None
    wanted = name.removesuffix(":latest")
    for card in model_cards(ctx):
        if (models and card.name == models[0].name) or wanted in (card.name, card.entry and card.entry.label):
            return card
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


# ---- the routes ---------------------------------------------------------------------

class _Served:
    """Told by the pipeline which backend takes the request: the clock of load_duration,
    and a request without num_predict gets that backend's context."""

    __slots__ = ("meta", "request", "sized")

    def __init__(self, meta: OllamaMeta, request: GenerationRequest, sized: bool) -> None:
        self.meta, self.request, self.sized = meta, request, sized

    def __call__(self, entry: BackendEntry) -> GenerationRequest:
        self.meta.taken = time.perf_counter_ns()
        if not self.sized:
            return self.request
        return replace(self.request, max_tokens=entry.caps.n_ctx or DEFAULT_MAX_TOKENS)


class OllamaRoutes:
    """The handlers, bound to the HttpApp whose pipeline call and checks they share."""

    def __init__(self, app: "HttpApp") -> None:
        self.app = app
        self.ctx: DaemonContext = app.ctx

    def handlers(self) -> dict[str, Handler]:
        return {"ollama_chat": self.chat, "ollama_generate": self.generate, "ollama_embed": self.embed,
                "ollama_embeddings": self.embeddings, "ollama_tags": self.tags, "ollama_ps": self.ps,
                "ollama_show": self.show, "ollama_version": self.version, "ollama_root": self.root}

    async def chat(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        body = parse(od.ChatRequest, await read_body(scope, receive))
        needs = Needs(tools=bool(body.tools), model=od.requested_model(body), keep_alive=od.keep_alive(body))
        meta = OllamaMeta(body.model or "", chat=True)
        if not body.messages:
            await self._loaded(out, meta, body.stream, needs)
            return
        greq = od.chat_request(body, f"chat-{uuid.uuid4().hex}")
        await self._run(scope, receive, out, _Served(meta, greq, od.sized_by_context(body)), needs, body.stream)

    async def generate(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        body = parse(od.GenerateRequest, await read_body(scope, receive))
        needs = Needs(model=od.requested_model(body), keep_alive=od.keep_alive(body))
        meta = OllamaMeta(body.model or "", chat=False)
        if not body.prompt and not body.images:
            await self._loaded(out, meta, body.stream, needs)
            return
        greq = od.generate_request(body, f"gen-{uuid.uuid4().hex}")
        await self._run(scope, receive, out, _Served(meta, greq, od.sized_by_context(body)), needs, body.stream)

    async def _loaded(self, out: Responder, meta: OllamaMeta, stream: bool, needs: Needs) -> None:
        # Ollama loads the model for an empty request (unloads it with keep_alive 0) and
        # generates nothing.
        data = loaded(meta, "unload" if needs.keep_alive == 0 else "load")
        content_type = b"application/x-ndjson" if stream else b"application/json"
        await out.start(200, [(b"content-type", content_type), (b"content-length", str(len(data) + 1).encode())])
        await out.body(data + b"\n", more=False)

    async def _run(self, scope: dict[str, Any], receive: Receive, out: Responder, served: _Served, needs: Needs,
                   stream: bool) -> None:
        if stream:
            await self.app.stream(scope, receive, out, served, needs, OllamaStream(out, served.meta))  # type: ignore[arg-type]
        else:
            sink = OllamaCollect(served.meta)
            await self.app.generate(scope, receive, out, served, needs, sink)  # type: ignore[arg-type]
            await self.app.whole(out, sink, served.meta)  # type: ignore[arg-type]

    # ---- embeddings --------------------------------------------------------------------

    async def _embed(self, scope: dict[str, Any], body: od._OllamaBody, texts: str | list[str],
                     dimensions: int | None) -> tuple[Any, int]:
        keep_alive = od.keep_alive(body)
        if not self.ctx.router.can_embed:
            raise HttpError(501, "no model here makes embeddings: start the daemon with --llamacpp-embed, "
                            'or set "embed": true on a backend in the config', "not_supported_error",
                            "embed_unsupported")
        resolved = od.embed_request(texts, dimensions, f"embd-{uuid.uuid4().hex}")
        resolved.model = od.requested_model(body)
        arrived = time.perf_counter_ns()
        try:
            _, result = await run.embed(self.ctx, resolved, surface="http", peer=peer_label(scope),
                                        keep_alive=keep_alive)
        except run.Refused as exc:
            raise HttpError.from_fault(exc.kind, exc.message) from None
        return result, time.perf_counter_ns() - arrived

    async def embed(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        body = parse(od.EmbedRequest, await read_body(scope, receive))
        result, took = await self._embed(scope, body, body.input, body.dimensions)
        await out.json(200, {"model": body.model, "embeddings": result.embeddings, "total_duration": took,
                             "load_duration": 0, "prompt_eval_count": result.input_tokens})

    async def embeddings(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        body = parse(od.EmbeddingsRequest, await read_body(scope, receive))
        if not body.prompt:
            od.requested_model(body)
            await out.json(200, {"embedding": []})  # Ollama's answer to an empty prompt
            return
        result, _ = await self._embed(scope, body, body.prompt, None)
        await out.json(200, {"embedding": result.embeddings[0]})

    # ---- what is here --------------------------------------------------------------------

    async def tags(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        await out.json(200, {"models": [
            {"name": c.name, "model": c.name, "modified_at": _iso(c.modified), "size": c.size, "digest": c.digest,
             "details": c.details()} for c in model_cards(self.ctx)]})

    async def ps(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        # What is loaded and ready; `expires_at` when an idle model counts down (issue 20).
        await out.json(200, {"models": [
            {"name": c.name, "model": c.name, "size": c.size, "digest": c.digest, "details": c.details(),
             "size_vram": c.size if c.entry.caps.gpu_layers else 0, "context_length": c.entry.caps.n_ctx,
             **({"expires_at": _iso(c.expires_at)} if c.expires_at is not None else {})}
            for c in model_cards(self.ctx) if c.entry is not None and c.entry.backend.ready()]})

    async def show(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        body = parse(od.ShowRequest, await read_body(scope, receive))
        name = body.model or body.name
        if not name:
            raise HttpError(400, "model is required", param="model")
        card = find_card(self.ctx, name)
        if card is None:
            raise HttpError(404, f"model '{name}' not found", "not_found_error", "model_not_found", "model")
        info: dict[str, Any] = {"general.name": card.name}
        if card.entry is not None and card.entry.caps.n_ctx:
            info["context_length"] = card.entry.caps.n_ctx
        await out.json(200, {"modelfile": "", "parameters": "", "template": "", "details": card.details(),
                             "model_info": info, "capabilities": card.capabilities,
                             "modified_at": _iso(card.modified)})

    async def version(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        await out.json(200, {"version": OLLAMA_API_VERSION, "inferd": __version__})

    async def root(self, scope: dict[str, Any], receive: Receive, out: Responder) -> None:
        data = b"Ollama is running"
        await out.start(200, [(b"content-type", b"text/plain; charset=utf-8"),
                              (b"content-length", str(len(data)).encode())])
        await out.body(b"" if scope["method"] == "HEAD" else data, more=False)

