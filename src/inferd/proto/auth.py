"""The loopback-TCP first frame: `{"type":"auth","key":"..."}` (THREAT_MODEL F-8)."""

from __future__ import annotations

import hmac
import json
from typing import Literal

from pydantic import BaseModel


class AuthFrame(BaseModel):
    type: Literal["auth"] = "auth"
    key: str


def parse_auth_key(line: bytes) -> str | None:
    """The key of an auth frame, or None when the line is anything else."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "auth":
        return None
    key = obj.get("key")
    return key if isinstance(key, str) else None


def keys_match(presented: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak the key (F-8)."""
    return hmac.compare_digest(presented.encode(), expected.encode())
