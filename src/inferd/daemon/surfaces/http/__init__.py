"""The OpenAI-compatible HTTP surface (docs/http.md, ADR 0013).

`server.bind_http` listens; `app.HttpApp` routes; `decode` and `encode` are the two
ends every request passes through; `io` bounds bodies and writes; `errors` maps a
fault kind to an HTTP status. uvicorn is imported only when the listener is bound,
so the daemon runs without the `http` extra when `--http` is not asked for.
"""

from __future__ import annotations

#: 47321-47323 are the NDJSON TCP ports; 47324 collides with no peer (Ollama 11434,
#: llama-server 8080 (9931 announced), vLLM and llama-cpp-python 8000, LM Studio 1234,
#: LocalAI 8080).
DEFAULT_HTTP_PORT = 47324
#: Ollama's own port: `--ollama` also listens here when it is free (ADR 0027).
OLLAMA_PORT = 11434

__all__ = ["DEFAULT_HTTP_PORT", "OLLAMA_PORT"]
