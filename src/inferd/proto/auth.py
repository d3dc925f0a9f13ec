"""The loopback-TCP first frame: `{"type":"auth","key":"..."}` (THREAT_MODEL F-8)."""

from __future__ import annotations

import hmac
import json
from typing import Literal

from pydantic import BaseModel

from .limits import MAX_AUTH_FRAME_BYTES

__all__ = ["AuthFrame", "MAX_AUTH_FRAME_BYTES", "keys_match", "parse_auth_key"]


class AuthFrame(BaseModel):
    type: Literal["auth"] = "auth"
    key: str


def parse_auth_key(line: bytes) -> str | None:
    """The key of an auth frame, or None when the line is anything else.

    Strict: the line must be UTF-8 without a byte-order mark (json.loads on bytes
    would skip one) and at most MAX_AUTH_FRAME_BYTES long.
    """
    if len(line) > MAX_AUTH_FRAME_BYTES:
        return None
    try:
        text = line.decode("utf-8")  # strict: no BOM skipping, no invalid bytes
        obj = json.loads(text)  # a str starting with U+FEFF is a JSONDecodeError
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "auth":
        return None
    key = obj.get("key")
    return key if isinstance(key, str) else None


def _key_bytes(key: str) -> bytes:
    # A JSON string may carry a lone surrogate (`"\\ud800"`); it must compare unequal,
    # never raise (issue 8 item 10: it used to log a traceback instead of auth_refused).
    return key.encode("utf-8", "surrogatepass")


def keys_match(presented: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak the key (F-8)."""
    return hmac.compare_digest(_key_bytes(presented), _key_bytes(expected))
