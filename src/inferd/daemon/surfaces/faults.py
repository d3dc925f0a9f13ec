"""Every wire's name for a fault kind: the one table (issue 17).

A row says how v1, v2, embed and HTTP each report one kind. v1's code set is closed
(upstream), so it folds kinds it has no code for into the nearest one; v2 and HTTP
name them. HTTP's `type` is OpenAI's class of error (the SDKs pick their exception by
the status, not by it). A tool call the model wrote but nobody can parse is a 502: the
request was fine and the server is healthy, but what it relayed from the model was not.

Anthropic's wire (/v1/messages) has its own statuses and types (its documented set:
400, 401, 403, 404, 413, 429, 500, 529): a full queue or a backend that cannot serve
now is its 529 `overloaded_error` (retried by its SDK), anything the server got wrong
its 500 `api_error`, and what no backend here can do a 400. The Responses API answers
in OpenAI's shape: the http columns.
"""

from __future__ import annotations

from typing import NamedTuple

from ...engine.backend import Fault
from ...proto.errors import EmbedErrorCode, ErrorCode
from ...proto.v2 import ErrorCodeV2


class FaultOnWire(NamedTuple):
    v1: str
    v2: str
    embed: str
    http_status: int
    http_type: str
    http_code: str
    anthropic_status: int
    anthropic_type: str
    #: Ollama's status where it differs from http_status (None: the same); its body is
    #: `{"error": message}` (http/ollama.py).
    ollama_status: int | None = None


_UNAVAILABLE = FaultOnWire(ErrorCode.BACKEND_UNAVAILABLE, ErrorCodeV2.BACKEND_UNAVAILABLE,
                           EmbedErrorCode.BACKEND_UNAVAILABLE, 503, "unavailable_error", "backend_unavailable",
                           529, "overloaded_error")

FAULTS: dict[Fault, FaultOnWire] = {
    Fault.NOT_READY: _UNAVAILABLE,
    Fault.UNAVAILABLE: _UNAVAILABLE,
    Fault.CLOSED: _UNAVAILABLE,  # draining
    Fault.ENGINE_CRASHED: _UNAVAILABLE,
    Fault.INVALID_REQUEST: FaultOnWire(ErrorCode.INVALID_REQUEST, ErrorCodeV2.INVALID_REQUEST,
                                       EmbedErrorCode.INVALID_REQUEST, 400, "invalid_request_error", "invalid_request",
                                       400, "invalid_request_error"),
    # Ollama answers a full queue with 503 ("server busy"), OpenAI with 429, Anthropic 529.
    Fault.QUEUE_FULL: FaultOnWire(ErrorCode.QUEUE_FULL, ErrorCodeV2.QUEUE_FULL, EmbedErrorCode.QUEUE_FULL,
                                  429, "rate_limit_error", "queue_full", 529, "overloaded_error", ollama_status=503),
    Fault.INTERNAL: FaultOnWire(ErrorCode.INTERNAL, ErrorCodeV2.INTERNAL, EmbedErrorCode.INTERNAL,
                                500, "server_error", "internal", 500, "api_error"),
    Fault.UNSUPPORTED: FaultOnWire(ErrorCode.INTERNAL, ErrorCodeV2.INTERNAL, EmbedErrorCode.EMBED_UNSUPPORTED,
                                   501, "not_supported_error", "unsupported", 400, "invalid_request_error"),
    # v1 and embed carry neither attachments nor tools: a backend that says so refuses the request.
    Fault.ATTACHMENT_UNSUPPORTED: FaultOnWire(ErrorCode.INVALID_REQUEST, ErrorCodeV2.ATTACHMENT_UNSUPPORTED,
                                              EmbedErrorCode.INVALID_REQUEST, 400, "invalid_request_error",
                                              "attachment_unsupported", 400, "invalid_request_error"),
    Fault.TOOL_CALL_MALFORMED: FaultOnWire(ErrorCode.BACKEND_UNAVAILABLE, ErrorCodeV2.TOOL_CALL_MALFORMED,
                                           EmbedErrorCode.BACKEND_UNAVAILABLE, 502, "server_error",
                                           "tool_call_malformed", 500, "api_error"),
    # Issue 20: only a request that names a model meets these.
    Fault.MODEL_NOT_FOUND: FaultOnWire(ErrorCode.MODEL_NOT_FOUND, ErrorCodeV2.MODEL_NOT_FOUND,
                                       EmbedErrorCode.MODEL_NOT_FOUND, 404, "invalid_request_error",
                                       "model_not_found", 404, "not_found_error"),
    Fault.INSUFFICIENT_MEMORY: FaultOnWire(ErrorCode.BACKEND_UNAVAILABLE, ErrorCodeV2.INSUFFICIENT_MEMORY,
                                           EmbedErrorCode.BACKEND_UNAVAILABLE, 503, "unavailable_error",
                                           "insufficient_memory", 529, "overloaded_error"),
}

#: The NDJSON surfaces' views of the table, by the wire they answer on.
V1_CODES: dict[Fault, str] = {kind: wire.v1 for kind, wire in FAULTS.items()}
V2_CODES: dict[Fault, str] = {kind: wire.v2 for kind, wire in FAULTS.items()}
EMBED_CODES: dict[Fault, str] = {kind: wire.embed for kind, wire in FAULTS.items()}
