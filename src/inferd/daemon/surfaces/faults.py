"""Each NDJSON wire's name for a fault kind: the one place kinds become error codes."""

from __future__ import annotations

from ...engine.backend import Fault
from ...proto.errors import EmbedErrorCode, ErrorCode
from ...proto.v2 import ErrorCodeV2

V1_CODES: dict[Fault, str] = {
    Fault.NOT_READY: ErrorCode.BACKEND_UNAVAILABLE,
    Fault.UNAVAILABLE: ErrorCode.BACKEND_UNAVAILABLE,
    Fault.CLOSED: ErrorCode.BACKEND_UNAVAILABLE,
    Fault.INVALID_REQUEST: ErrorCode.INVALID_REQUEST,
    Fault.QUEUE_FULL: ErrorCode.QUEUE_FULL,
    Fault.INTERNAL: ErrorCode.INTERNAL,
    Fault.UNSUPPORTED: ErrorCode.INTERNAL,
    # v1 carries neither attachments nor tools; a backend that says so is refusing the request.
    Fault.ATTACHMENT_UNSUPPORTED: ErrorCode.INVALID_REQUEST,
    Fault.TOOL_CALL_MALFORMED: ErrorCode.BACKEND_UNAVAILABLE,
    Fault.ENGINE_CRASHED: ErrorCode.BACKEND_UNAVAILABLE,
}

V2_CODES: dict[Fault, str] = {
    **V1_CODES,
    Fault.ATTACHMENT_UNSUPPORTED: ErrorCodeV2.ATTACHMENT_UNSUPPORTED,
    Fault.TOOL_CALL_MALFORMED: ErrorCodeV2.TOOL_CALL_MALFORMED,
}

EMBED_CODES: dict[Fault, str] = {**V1_CODES, Fault.UNSUPPORTED: EmbedErrorCode.EMBED_UNSUPPORTED}
