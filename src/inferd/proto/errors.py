"""Error codes and protocol-level exceptions shared by every surface.

The v1 code set is closed (upstream-protocol §3.4); embed adds `embed_unsupported`
and v2 adds `attachment_unsupported` / `tool_call_malformed`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel


class ErrorCode(StrEnum):
    QUEUE_FULL = "queue_full"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    INVALID_REQUEST = "invalid_request"
    FRAME_TOO_LARGE = "frame_too_large"
    INTERNAL = "internal"
    #: inferd extension (issue 20): only a request that names a model can get it.
    MODEL_NOT_FOUND = "model_not_found"


class EmbedErrorCode(StrEnum):
    QUEUE_FULL = "queue_full"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    INVALID_REQUEST = "invalid_request"
    FRAME_TOO_LARGE = "frame_too_large"
    INTERNAL = "internal"
    EMBED_UNSUPPORTED = "embed_unsupported"
    MODEL_NOT_FOUND = "model_not_found"


class ProtoError(Exception):
    """A frame could not be read or a request is not acceptable."""

    code: str = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FrameTooLarge(ProtoError):
    code = ErrorCode.FRAME_TOO_LARGE

    def __init__(self, cap: int) -> None:
        super().__init__(f"frame exceeds {cap} byte cap")
        self.cap = cap


class ReadTimedOut(ProtoError):
    """A peer began a frame and did not finish it within the read timeout (F-22)."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, seconds: float) -> None:
        super().__init__(f"frame not completed within {seconds:g} s (the read timeout); send whole lines")
        self.seconds = seconds


class BufferBudgetFull(ProtoError):
    """The daemon-wide budget for partial frames is in use: this frame is refused (F-22).

    `queue_full`, as a full queue is: the daemon is at capacity and a retry may succeed."""

    code = ErrorCode.QUEUE_FULL

    def __init__(self, limit: int) -> None:
        super().__init__(f"the daemon already holds {limit} bytes of unfinished requests (its buffer budget); "
                         "retry later")
        self.limit = limit


class DecodeError(ProtoError):
    """The line is not JSON of the expected shape; the connection is closed after it."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(f"decode: {detail}")


class InvalidRequest(ProtoError):
    """Well-formed JSON that fails semantic validation; the connection stays open."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid request: {detail}")
        self.detail = detail


class ErrorFrame(BaseModel):
    """The terminal error frame of every NDJSON surface (v1, v2, embed): one shape."""

    type: Literal["error"] = "error"
    id: str
    # A plain string on decode so a newer daemon's code does not break old clients.
    code: str
    message: str

    @property
    def is_terminal(self) -> bool:
        return True


def encode_error(id: str, code: str, message: str) -> bytes:
    """One error frame line; error messages are short, so the frame cap cannot bite."""
    return json.dumps({"type": "error", "id": id, "code": str(code), "message": message},
                      separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
