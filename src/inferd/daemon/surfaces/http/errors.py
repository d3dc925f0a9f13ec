"""OpenAI's error shape, and the one table from a fault kind to an HTTP status.

Every error body is `{"error": {"message", "type", "param", "code"}}`: `type` is the
class of error as OpenAI and llama-server name it (the SDKs pick their exception by
the status, not by this), `code` is ours and stable (the v1 wire's code where one
exists). A tool call the model wrote but nobody can parse is a 502: the request was
fine and the server is healthy, but what it relayed from the model was not.
"""

from __future__ import annotations

import json
from typing import Any

from ....engine.backend import Fault

#: Fault kind -> (status, type, code).
FAULT_STATUS: dict[Fault, tuple[int, str, str]] = {
    Fault.QUEUE_FULL: (429, "rate_limit_error", "queue_full"),
    Fault.INVALID_REQUEST: (400, "invalid_request_error", "invalid_request"),
    Fault.ATTACHMENT_UNSUPPORTED: (400, "invalid_request_error", "attachment_unsupported"),
    Fault.UNSUPPORTED: (501, "not_supported_error", "unsupported"),
    Fault.NOT_READY: (503, "unavailable_error", "backend_unavailable"),
    Fault.UNAVAILABLE: (503, "unavailable_error", "backend_unavailable"),
    Fault.CLOSED: (503, "unavailable_error", "backend_unavailable"),  # draining
    Fault.ENGINE_CRASHED: (503, "unavailable_error", "backend_unavailable"),
    Fault.TOOL_CALL_MALFORMED: (502, "server_error", "tool_call_malformed"),
    Fault.INTERNAL: (500, "server_error", "internal"),
}
_FALLBACK = (500, "server_error", "internal")

#: Seconds a client told `queue_full` should wait before it tries again.
RETRY_AFTER_SECS = 1


class HttpError(Exception):
    """An error answer: status, OpenAI error body, extra headers."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str = "invalid_request", param: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or []

    @classmethod
    def from_fault(cls, kind: Fault, message: str) -> "HttpError":
        status, type_, code = FAULT_STATUS.get(kind, _FALLBACK)
        headers = [(b"retry-after", str(RETRY_AFTER_SECS).encode())] if kind is Fault.QUEUE_FULL else None
        return cls(status, message, type_, code, headers=headers)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def encode(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":")).encode()


def invalid(message: str, param: str | None = None, code: str = "invalid_request") -> HttpError:
    return HttpError(400, message, "invalid_request_error", code, param)
