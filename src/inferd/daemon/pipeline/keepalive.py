"""`keep_alive`: how long a model stays loaded after a request, in Ollama's terms
(issue 20). One parser for every surface that takes it (Ollama's API, the `keep_alive`
extension on OpenAI's and inferd's wires, the config default).

- a number: seconds (`0` unloads the model once this request is done);
- a duration string: `"5m"`, `"1h30m"`, `"90s"`, `"1.5h"`, `"300ms"` (Go's units);
  a bare number in a string (`"300"`) is seconds;
- anything negative: keep the model loaded for ever (`math.inf`).
"""

from __future__ import annotations

import math
import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
#: Longest accepted string: a duration is a few parts, not a payload.
_MAX_CHARS = 64


class KeepAliveError(ValueError):
    """A keep_alive value that is neither a number nor a duration string."""


def parse_keep_alive(value: object) -> float | None:
    """Seconds to keep the model loaded after the request; `math.inf` for ever; None
    when `value` is None (the configured default applies). Raises KeepAliveError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise KeepAliveError("keep_alive must be a number of seconds or a duration such as \"5m\"")
    if isinstance(value, (int, float)):
        return _seconds(float(value))
    if not isinstance(value, str):
        raise KeepAliveError("keep_alive must be a number of seconds or a duration such as \"5m\"")
    text = value.strip()
    if not text or len(text) > _MAX_CHARS:
        raise KeepAliveError(f"keep_alive {value[:_MAX_CHARS]!r} is not a duration such as \"5m\"")
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    try:
        return _seconds(sign * float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise KeepAliveError(f"keep_alive {value!r} is not a duration such as \"5m\", \"1h30m\" or \"-1\"")
    return _seconds(sign * total)


def _seconds(seconds: float) -> float:
    if math.isnan(seconds):
        raise KeepAliveError("keep_alive must be a number")
    return math.inf if seconds < 0 else seconds
