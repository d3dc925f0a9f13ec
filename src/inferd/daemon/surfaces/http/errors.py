"""OpenAI's error shape.

Every error body is `{"error": {"message", "type", "param", "code"}}`: `type` is the
class of error as OpenAI and llama-server name it (the SDKs pick their exception by
the status, not by this), `code` is ours and stable (the v1 wire's code where one
exists). A fault's status, type and code are its row in surfaces/faults.py.
"""

from __future__ import annotations

import json
from typing import Any

from ....engine.backend import Fault
from ..faults import FAULTS

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
        #: The fault this answers, when it is one: a wire with its own table (Anthropic's)
        #: looks its status and type up by it.
        self.kind: Fault | None = None

    @classmethod
    def from_fault(cls, kind: Fault, message: str) -> "HttpError":
        wire = FAULTS[kind]
        headers = [(b"retry-after", str(RETRY_AFTER_SECS).encode())] if kind is Fault.QUEUE_FULL else None
        err = cls(wire.http_status, message, wire.http_type, wire.http_code, headers=headers)
        err.kind = kind
        return err

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def encode(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":")).encode()


def invalid(message: str, param: str | None = None, code: str = "invalid_request") -> HttpError:
    return HttpError(400, message, "invalid_request_error", code, param)
