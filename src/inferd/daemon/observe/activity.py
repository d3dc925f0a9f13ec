"""The activity log, on stdlib `logging`: `<log dir>/inferd.ndjson`, one JSON object per line.

A call site logs once, on the daemon's activity logger, with the record's structured
part as `extra=activity_record(component, name, **fields)`; the record goes to the file and,
through the root logger, to stderr. On the file's handler (`ActivityFileHandler`)
`RedactingFilter` redacts and `JsonLinesFormatter` writes
`{"t", "level", "component", "msg", ...fields}` with `t` in RFC 3339 UTC with
milliseconds. Every value is cut to 1 KiB (`clip`, with a `…[+N bytes]` marker) and
redacted (`redact`, linear time; THREAT_MODEL F-3), so neither the cost of logging nor
the size of a record depends on what a client sent; the live file is rotated at 16 MiB
keeping three older generations (F-4). The daemon's own API key is redacted verbatim
wherever it appears (`add_literal_secret`). ADR 0023.

What callers may log: request ids, counts, token usage, stop reasons, backend
names, peer identities, timings. Never prompt text, message content, generated
output or attachment bytes at `info` or above; such text may only be logged at
`debug`, which an operator has to switch on (`INFERD_LOG=debug`). The redactor
is a safety net for credentials that slip into ids and error messages, not a
licence to log content.

The level threshold comes from `INFERD_LOG` (`debug`, `info` (default), `warn`,
`error`, `off`; `0` means off and `1` means info, as the upstream docs describe;
an EnvFilter-style `target=level,...` list uses its most verbose level).

Logging must never take the daemon down: serialisation problems turn into a
synthetic error record, and write errors are swallowed.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import logging.handlers
import math
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = [
    "ACTIVITY_LOGGER",
    "ActivityFileHandler",
    "ActivityLog",
    "DEFAULT_GENERATIONS",
    "DEFAULT_MAX_BYTES",
    "LOG_FILE_NAME",
    "EVENT_ATTR",
    "JsonLinesFormatter",
    "MAX_LOGGED_VALUE_BYTES",
    "NullActivityLog",
    "RedactingFilter",
    "activity_record",
    "add_literal_secret",
    "clip",
    "default_log_dir",
    "parse_level",
    "python_log_level",
    "redact",
    "remove_literal_secret",
]

LOG_FILE_NAME = "inferd.ndjson"
DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # F-4
DEFAULT_GENERATIONS = 3  # F-4

_LEVELS = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4}
_OFF = 5
_LEVEL_ALIASES = {
    "warning": "warn",
    "critical": "error",
    "fatal": "error",
    "err": "error",
}


def default_log_dir() -> Path:
    """`$INFERD_LOG_DIR` when set and non-empty, else the platform's per-user log dir."""
    env = os.environ.get("INFERD_LOG_DIR")
    if env:
        return Path(env)
    import platformdirs

    # appauthor=False: on Windows this gives %LOCALAPPDATA%\inferd\Logs rather
    # than a doubled inferd\inferd.
    return Path(platformdirs.user_log_dir("inferd", appauthor=False))


# --------------------------------------------------------------------------- #
# Redaction (F-3)
# --------------------------------------------------------------------------- #
#
# The rules and markers are upstream's (its THREAT_MODEL F-3 redactor); they run
# on the serialised JSON line, exactly what reaches the disk. Two details are ours:
#   * A secret that is a JSON field (`"password": "..."`,
#     `"authorization": "Bearer ..."`) keeps its key and quotes and only the value
#     becomes the marker, so the line stays valid JSON. Anywhere else the whole
#     match becomes the marker, as upstream does.
#   * Prefix-style keys (`sk-`, `AKIA`, ...) must start at a word boundary, so
#     `task-specific-model` or `disk-usage-...` in a model path is not mistaken
#     for `sk-...`. In a serialised line the text after a JSON escape such as
#     `\n` or `\u001b` counts as a boundary too.

_AUTH_MARK = "[REDACTED:auth-header]"
_SECRET_MARK = "[REDACTED:secret-kv]"

_SECRET_WORD_LIST = ("password", "passwd", "pwd", "api_key", "apikey", "api-key", "secret", "token")
_SECRET_WORDS = "(?:" + "|".join(re.escape(w) for w in _SECRET_WORD_LIST) + ")"
_AUTH_VALUE = r"(?:bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{8,}"
# A value stops at whitespace, quotes, backslashes (JSON escapes) and the usual
# separators, so a replacement never swallows the structure around it.
_KV_VALUE = r"[^\s\"'\\,;&]{4,}"
_BOUNDARY = r"(?:(?<![A-Za-z0-9])|(?<=\\[bfnrt])|(?<=\\u[0-9a-fA-F]{4}))"

# `"authorization": "Bearer xyz..."` as a JSON field: keep the key and quotes.
_AUTH_FIELD = re.compile(r'(?P<keep>authorization"\s*:\s*")' + _AUTH_VALUE, re.IGNORECASE)
# `Authorization: Bearer xyz...`, `authorization=token xyz...` inside text.
_AUTH_TEXT = re.compile(
    r"authorization(?:\\\")?\s*[:=]\s*(?:\\\"|\"|')?" + _AUTH_VALUE, re.IGNORECASE
)
# `"db_password": "..."` / `"token": 12345678` as a JSON field: keep the key.
_SECRET_FIELD = re.compile(
    r'(?P<keep>' + _SECRET_WORDS + r'"\s*:\s*)'
    r'(?:"(?:[^"\\]|\\.){4,}"|-?[0-9][0-9.eE+\-]{3,})',
    re.IGNORECASE,
)
# `password=hunter22`, `token: abcd`, `secret="abcd"` (escaped or not) inside text.
_SECRET_TEXT = re.compile(
    _SECRET_WORDS + r"(?:\\\")?\s*[:=]\s*(?:\\\"|\"|')?" + _KV_VALUE, re.IGNORECASE
)

# Linear-time rules only (issue 8 item 1): every rule below either consumes what it
# scans or fails within a bounded distance of where it started, so no input makes
# the regex engine go back over the same text again and again. The JWT rule is not a
# regex for that reason (`_redact_jwts`). The order of application is upstream's:
# auth headers, key-value secrets, JWTs, API keys, AWS keys.


def _at_word_start(literal: str) -> str:
    """`literal` where `_BOUNDARY` holds before it. The literal comes first and the
    boundary is checked looking back from its end, so the regex engine can skip to
    each occurrence of the literal instead of testing the boundary at every position
    (5-100x faster on long values, same matches)."""
    lit = re.escape(literal)
    return lit + r"(?<=" + _BOUNDARY + lit + r")"


_RULES_AFTER_JWT: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"(?:" + _at_word_start("sk-") + r"[A-Za-z0-9_\-]{16,}"
            + r"|" + _at_word_start("xox") + r"[baps]-[A-Za-z0-9\-]{10,}"
            + r"|" + _at_word_start("gh") + r"[posu]_[A-Za-z0-9]{20,}"
            + r"|" + _at_word_start("pat-") + r"[A-Za-z0-9_\-]{16,}"
            + r"|" + _at_word_start("thingspat_") + r"[A-Za-z0-9_\-]{16,})"
        ),
        "[REDACTED:api-key]",
    ),
    (re.compile(_at_word_start("AKIA") + r"[0-9A-Z]{16}"), "[REDACTED:aws-access]"),
    (re.compile(_at_word_start("ASIA") + r"[0-9A-Z]{16}"), "[REDACTED:aws-session]"),
)

# A JWT is `eyJ<seg>.<seg>.<seg?>` starting at a boundary. As one regex
# (`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*`) every `eyJ` of a long dotless
# run like "eyJ-eyJ-eyJ-..." rescanned the rest of the run: quadratic, 160 s for 1 MiB
# with the event loop blocked. Instead: find dotted triples of segments (each segment
# scanned a bounded number of times, possessively), then look for the first `eyJ` at a
# boundary inside the first segment of each. The text replaced is exactly what the
# regex replaced: from that `eyJ` to the end of the third segment.
_JWT_MARK = "[REDACTED:jwt]"
_SEG = r"[A-Za-z0-9_\-]"
_JWT_SHAPE = re.compile(r"(?<!" + _SEG + r")(" + _SEG + r"++)\." + _SEG + r"++\." + _SEG + r"*+")
_ASCII_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


def _at_boundary(text: str, i: int) -> bool:
    """`_BOUNDARY` at index i: not after an ASCII letter or digit, or right after a JSON
    escape such as `\\n` or `\\u001b` in a serialised line."""
    if i == 0 or text[i - 1] not in _ASCII_ALNUM:
        return True
    if i >= 2 and text[i - 2] == "\\" and text[i - 1] in "bfnrt":
        return True
    return i >= 6 and text[i - 6] == "\\" and text[i - 5] == "u" and all(c in _HEX for c in text[i - 4:i])


def _jwt_start(text: str, start: int, end: int) -> int:
    """The first `eyJ` at a boundary in text[start:end] with a character after it, or -1."""
    i = text.find("eyJ", start, end)
    while i != -1:
        if i + 3 >= end:
            return -1  # `eyJ` ends the segment: the JWT's first part would be empty
        if _at_boundary(text, i):
            return i
        i = text.find("eyJ", i + 1, end)
    return -1


def _redact_jwts(text: str) -> str:
    if "eyJ" not in text:
        return text
    out: list[str] = []
    kept = pos = 0
    while True:
        m = _JWT_SHAPE.search(text, pos)
        if m is None:
            break
        seg_start, seg_end = m.span(1)
        at = _jwt_start(text, seg_start, seg_end)
        if at < 0:
            pos = seg_end + 1  # the next segment may start a JWT of its own
            continue
        out.append(text[kept:at])
        out.append(_JWT_MARK)
        kept = pos = m.end()
    if not out:
        return text
    out.append(text[kept:])
    return "".join(out)


# The daemon's own secrets (its API key), redacted verbatim wherever they appear,
# whatever they look like. Counted, so two servers in one process can share one.
_literal_secrets: dict[str, int] = {}
_literal_order: tuple[str, ...] = ()
_literal_lock = threading.Lock()
_LITERAL_MARK = "[REDACTED:api-key]"
#: Shorter secrets are not registered: replacing every "abc" would wreck the log.
MIN_LITERAL_SECRET = 4


def add_literal_secret(secret: str | None) -> bool:
    """Redact `secret` verbatim from every later record and stderr line (F-3).

    Returns False (and registers nothing) for a secret shorter than MIN_LITERAL_SECRET.
    """
    global _literal_order
    if not secret or len(secret) < MIN_LITERAL_SECRET:
        return False
    with _literal_lock:
        _literal_secrets[secret] = _literal_secrets.get(secret, 0) + 1
        _literal_order = tuple(sorted(_literal_secrets, key=len, reverse=True))
    _redact_short.cache_clear()
    return True


def remove_literal_secret(secret: str | None) -> None:
    global _literal_order
    if not secret:
        return
    with _literal_lock:
        n = _literal_secrets.get(secret, 0)
        if n <= 1:
            _literal_secrets.pop(secret, None)
        else:
            _literal_secrets[secret] = n - 1
        _literal_order = tuple(sorted(_literal_secrets, key=len, reverse=True))
    _redact_short.cache_clear()


def _redact_literals(text: str) -> str:
    for secret in _literal_order:
        if secret in text:
            text = text.replace(secret, _LITERAL_MARK)
    return text


def _keep_key(mark: str, *, quoted: bool) -> Callable[[re.Match[str]], str]:
    value = f'"{mark}"' if quoted else mark

    def replace(m: re.Match[str]) -> str:
        return m.group("keep") + value

    return replace


_REPLACE_AUTH_FIELD = _keep_key(_AUTH_MARK, quoted=False)
_REPLACE_SECRET_FIELD = _keep_key(_SECRET_MARK, quoted=True)
_SECRET_KEY = re.compile(_SECRET_WORDS + r"$", re.IGNORECASE)
_AUTH_KEY_VALUE = re.compile(_AUTH_VALUE, re.IGNORECASE)


def redact(line: str) -> str:
    """Replace credentials in `line` (plain text or a serialised JSON record) with markers.

    auth headers -> [REDACTED:auth-header]; password/secret/token/api key
    `key=value` pairs -> [REDACTED:secret-kv]; JWTs -> [REDACTED:jwt];
    sk-/xox?-/gh?_/pat-/thingspat_ keys -> [REDACTED:api-key];
    AKIA... -> [REDACTED:aws-access]; ASIA... -> [REDACTED:aws-session].
    """
    if not line:
        return line
    out = _redact_literals(line)
    # The case-insensitive rules cannot skip ahead to a literal; most text names no
    # credential at all, which one lower-cased copy and a few `in` tests tell us.
    lower = out.lower()
    auth = "authorization" in lower
    kv = any(word in lower for word in _SECRET_WORD_LIST)
    if auth:
        out = _AUTH_FIELD.sub(_REPLACE_AUTH_FIELD, out)
    if kv:
        out = _SECRET_FIELD.sub(_REPLACE_SECRET_FIELD, out)
    if auth:
        out = _AUTH_TEXT.sub(_AUTH_MARK, out)
    if kv:
        out = _SECRET_TEXT.sub(_SECRET_MARK, out)
    out = _redact_jwts(out)
    for pattern, mark in _RULES_AFTER_JWT:
        out = pattern.sub(mark, out)
    return out


# --------------------------------------------------------------------------- #
# Truncation (issue 8 item 1)
# --------------------------------------------------------------------------- #
#
# A logged value is cut to MAX_LOGGED_VALUE_BYTES before it is redacted, so neither
# the redactor's time nor the record's size depends on what a client sent (a 40 MiB
# id used to write a 40 MiB record and push the owner's history out of the rotation).
# A secret cut in half might no longer match its rule, so when the cut falls inside
# a word (a run of characters that can belong to a secret), the whole word goes.
# The daemon's own key is replaced before the cut, so a key straddling it is caught.

MAX_LOGGED_VALUE_BYTES = 1024
MAX_LOGGED_ITEMS = 64
# What ends a secret's value in every rule above (`_KV_VALUE` is the widest).
_WORD_END = frozenset(" \t\n\r\f\v\"'\\,;&")


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _utf8_prefix(text: str, limit: int) -> str:
    """The longest prefix of `text` (whole characters) of at most `limit` UTF-8 bytes."""
    if text.isascii():
        return text[:limit]
    raw = text.encode("utf-8", "surrogatepass")
    cut = min(limit, len(raw))
    while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:
        cut -= 1  # never split a character
    return raw[:cut].decode("utf-8", "surrogatepass")


def clip(text: str, limit: int = MAX_LOGGED_VALUE_BYTES) -> str:
    """`text` redacted, cut to at most `limit` UTF-8 bytes plus a `…[+N bytes]` marker."""
    if len(text) <= limit // 4 or (len(text) <= limit and _utf8_len(text) <= limit):
        return redact(text)
    longest = len(_literal_order[0]) if _literal_order else 0
    window = _redact_literals(text[: limit + longest + 1])
    head = _utf8_prefix(window, limit)
    if len(head) < len(window) and window[len(head)] not in _WORD_END:
        i = len(head)
        while i > 0 and head[i - 1] not in _WORD_END:
            i -= 1
        head = head[:i]
    dropped = _utf8_len(text) - _utf8_len(head)
    return f"{redact(head)}…[+{dropped} bytes]"


# --------------------------------------------------------------------------- #
# Levels
# --------------------------------------------------------------------------- #


def _normalise_level(level: str) -> str:
    name = str(level).strip().lower()
    return _LEVEL_ALIASES.get(name, name)


def parse_level(spec: str | None) -> int:
    """Threshold rank for an `INFERD_LOG` value; unknown or empty means `info`."""
    if spec is None or not spec.strip():
        return _LEVELS["info"]
    ranks: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name = _normalise_level(part.rsplit("=", 1)[-1])
        if name in ("off", "0", "none"):
            ranks.append(_OFF)
        elif name == "1":
            ranks.append(_LEVELS["info"])
        elif name in _LEVELS:
            ranks.append(_LEVELS[name])
    return min(ranks) if ranks else _LEVELS["info"]


_PY_LEVELS = (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL + 1)


def python_log_level(spec: str | None) -> int:
    """The stdlib logging level for the same `INFERD_LOG` value (one parser for both logs)."""
    return _PY_LEVELS[parse_level(spec)]



# --------------------------------------------------------------------------- #
# Serialisation
# --------------------------------------------------------------------------- #

_MAX_DEPTH = 16


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: str keys, lists for sequences, str() for everything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    return str(value)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)


def _redact_tree(value: Any, key: str | None = None) -> Any:
    """Field-by-field redaction of a record: every string value and key is checked."""
    if isinstance(value, dict):
        # A non-str key makes json.dumps raise TypeError: the formatter then retries via _plain.
        return {(_redact_str(k) if isinstance(k, str) else k): _redact_tree(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > MAX_LOGGED_ITEMS:
            extra = len(value) - MAX_LOGGED_ITEMS
            return [_redact_tree(v) for v in value[:MAX_LOGGED_ITEMS]] + [f"…[+{extra} items]"]
        return [_redact_tree(v) for v in value]
    if key is not None and not isinstance(value, bool) and isinstance(value, (str, int, float)):
        # Both tests look at the end of the key only (the longest word is 13 letters).
        if _SECRET_KEY.search(key[-16:]) and len(str(value)) >= 4:
            return _SECRET_MARK
        if key[-16:].lower().endswith("authorization") and isinstance(value, str):
            if _AUTH_KEY_VALUE.match(value):
                return _AUTH_MARK
    if isinstance(value, str):
        return _redact_str(value)
    return value


@functools.lru_cache(maxsize=2048)
def _redact_short(text: str) -> str:
    return redact(text)


def _redact_str(text: str) -> str:
    # Keys, event names and peer labels repeat on every record: cache the short ones.
    return _redact_short(text) if len(text) <= 128 else clip(text)


def _level_name(levelno: int) -> str:
    """The record's `level` as the log has always spelled it."""
    if levelno < logging.INFO:
        return "debug"
    if levelno < logging.WARNING:
        return "info"
    return "warn" if levelno < logging.ERROR else "error"


def _timestamp(created: float) -> str:
    whole = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((created - whole) * 1000):03d}Z"


# --------------------------------------------------------------------------- #
# Records: what a call site passes as `extra=`
# --------------------------------------------------------------------------- #

#: The LogRecord attribute that carries an activity record's structured part.
EVENT_ATTR = "inferd_event"
# The envelope is written by this module, never by a caller.
_ENVELOPE = frozenset(("t", "level", "component", "msg"))


class Event:
    """The structured part of one activity record: the component, the event name (the
    record's `msg` on disk; None: the log call's message) and the fields. `clean` is the
    redacted `{"msg", ...fields}`, filled in by `RedactingFilter`."""

    __slots__ = ("component", "name", "fields", "clean")

    def __init__(self, component: str, name: str | None, fields: dict[str, Any]) -> None:
        self.component = component
        self.name = name
        self.fields = fields
        self.clean: dict[str, Any] | None = None


def activity_record(component: str, name: str | None = None, **fields: Any) -> dict[str, Event]:
    """The `extra=` of a log call on the activity logger:
    `activity.logger.info("reloaded from %s", src, extra=activity_record("lifecycle", "reloaded", source=src))`
    writes `"msg": "reloaded"` and `"source"` to the file and the formatted message to stderr.
    Without a name the file's `msg` is the formatted message."""
    if not _ENVELOPE.isdisjoint(fields):
        # The four envelope keys are authoritative.
        fields = {f"field_{k}" if k in _ENVELOPE else k: v for k, v in fields.items()}
    return {EVENT_ATTR: Event(component, name, fields)}


def _event_of(record: logging.LogRecord) -> Event:
    found = getattr(record, EVENT_ATTR, None)
    if found is None:
        # A call without `extra=activity_record(...)`: its message is the whole record.
        found = Event("activity", None, {})
        setattr(record, EVENT_ATTR, found)
    return found


def _payload(ev: Event, record: logging.LogRecord) -> dict[str, Any]:
    return {"msg": record.getMessage() if ev.name is None else ev.name, **ev.fields}


def _redact_fields(payload: dict[str, Any]) -> dict[str, Any]:
    # The top-level keys are keyword names in our code, not text from a client.
    return {k: _redact_tree(v, k) for k, v in payload.items()}


class RedactingFilter(logging.Filter):
    """F-3: every caller-supplied string of an activity record is redacted, value by
    value, before the line is built, so no substitution can break the JSON around it.
    (Redacting the whole serialised line ran eight regexes over ~250 bytes on every
    request.) Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ev = _event_of(record)
        if ev.clean is None:
            try:
                ev.clean = _redact_fields(_payload(ev, record))
            except Exception:  # noqa: BLE001 - a cyclic field, bad format args: the formatter copes
                pass  # (a filter that raises would raise out of the log call)
        return True


class JsonLinesFormatter(logging.Formatter):
    """One record as one JSON object, `{"t", "level", "component", "msg", ...fields}`,
    `t` in RFC 3339 UTC with milliseconds. Never raises: a record that cannot be
    serialised turns into an error record saying so. Tracebacks are not written
    (they may quote what a client sent)."""

    def format(self, record: logging.LogRecord) -> str:
        ev = _event_of(record)
        head = {"t": _timestamp(record.created), "level": _level_name(record.levelno), "component": ev.component}
        if ev.clean is not None:
            try:
                return _dumps({**head, **ev.clean})
            except (TypeError, ValueError, RecursionError):
                pass  # a non-str key or a cycle: retried as plain data below
        try:
            # Redacted here too, so this formatter never writes a secret, filter or not.
            return _dumps({**head, **_redact_fields(_plain(_payload(ev, record)))})
        except Exception as exc:  # noqa: BLE001 - a log call must not raise
            return _dumps({**head, "level": "error", "component": "activity",
                           "msg": "log record could not be serialised", "error": type(exc).__name__,
                           "dropped_component": _redact_str(ev.component),
                           "dropped_msg": _redact_str(str(ev.name or record.msg))})


# --------------------------------------------------------------------------- #
# The file (F-2 symlinks, F-4 rotation)
# --------------------------------------------------------------------------- #


class ActivityFileHandler(logging.handlers.RotatingFileHandler):
    """`<directory>/inferd.ndjson`, rotated before a record would push a non-empty file
    past `max_bytes` (F-4), keeping `generations` older files. The file is opened with
    `O_NOFOLLOW` and must be a regular file (F-2); a file removed or replaced behind our
    back is reopened; a write that fails drops its record, never the daemon."""

    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 generations: int = DEFAULT_GENERATIONS) -> None:
        self.directory = Path(directory)
        self._ino: tuple[int, int] | None = None
        self._size = 0
        # At least one older file: with none, RotatingFileHandler never rotates at all.
        super().__init__(self.directory / LOG_FILE_NAME, maxBytes=max_bytes, backupCount=max(1, generations),
                         encoding="utf-8", delay=True)
        self.addFilter(RedactingFilter())
        self.setFormatter(JsonLinesFormatter())

    def _open(self) -> BinaryIO:
        # The one place RotatingFileHandler opens the file (at the first record and
        # after each rotation); a stdlib seam, pinned by test_symlink_at_log_path_is_not_followed.
        from inferd.daemon.net.paths import ensure_private_dir

        ensure_private_dir(self.directory)
        # O_NOFOLLOW: a symlink planted at the log path must not redirect our
        # writes into another file (same reasoning as F-2).
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        fd = os.open(self.baseFilename, flags, 0o600)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(f"{self.baseFilename} is not a regular file")
        self._ino = (st.st_dev, st.st_ino)
        self._size = st.st_size
        # Unbuffered bytes: one write(2) per record, as the record is complete.
        return open(fd, "ab", buffering=0)

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held, so records never interleave.
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            if self.stream is not None and not self._still_ours():
                self._drop_stream()
            if self.stream is None:
                self.stream = self._open()
            # F-4: rotate before a record would push a non-empty file past the cap.
            if self._size > 0 and self._size + len(data) > self.maxBytes:
                self.doRollover()  # leaves the stream closed (delay=True)
                self.stream = self._open()
            self._size += self.stream.write(data)
        except Exception:  # noqa: BLE001 - disk full, directory gone, read-only mount
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # Drop the record, and reopen next time in case the condition has cleared.
        self._drop_stream()

    def _still_ours(self) -> bool:
        """Whether the live path still names the file we hold open: if the file or its
        directory was removed or replaced, writes to the old descriptor would vanish."""
        try:
            st = os.stat(self.baseFilename)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._ino

    def _drop_stream(self) -> None:
        stream, self.stream = self.stream, None  # type: ignore[assignment]
        self._ino = None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- #
# One daemon's log
# --------------------------------------------------------------------------- #

#: The parent of every daemon's activity logger; records propagate from there to the
#: root logger (stderr under `inferd serve`), so a call site logs once for both.
ACTIVITY_LOGGER = "inferd.activity"
_daemons = itertools.count(1)


def _traffic_logger(parent: logging.Logger) -> logging.Logger:
    traffic = parent.getChild("traffic")
    # A line per request or connection is the file's job: on stderr (journald) it
    # would bury what an operator has to see.
    traffic.propagate = False
    # Without any handler, stdlib would print its warnings through its last resort.
    traffic.addHandler(logging.NullHandler())
    return traffic


class ActivityLog:
    """One daemon's activity log. `logger`: records that go to `<directory>/inferd.ndjson`
    and on to the root logger (lifecycle, refusals, circuit changes); `traffic`, its
    child: one record per request or connection, to the file only. Each instance has
    loggers of its own (tests run many daemons in one process, each with its own
    directory and level)."""

    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 generations: int = DEFAULT_GENERATIONS, *, level: str | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOG_FILE_NAME
        self.logger = logging.getLogger(f"{ACTIVITY_LOGGER}.{next(_daemons)}")
        self.logger.setLevel(python_log_level(os.environ.get("INFERD_LOG") if level is None else level))
        self.traffic = _traffic_logger(self.logger)
        self._file = ActivityFileHandler(self.directory, max_bytes, generations)
        self.logger.addHandler(self._file)
        self.traffic.addHandler(self._file)

    def close(self) -> None:
        self.traffic.removeHandler(self._file)
        self.logger.removeHandler(self._file)
        self._file.close()

    def __enter__(self) -> ActivityLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NullActivityLog:
    """No activity file (tests, embedding the daemon): `logger`'s records still reach
    stdlib logging, as whoever embeds the daemon configured it; `traffic` goes nowhere."""

    logger = logging.getLogger(ACTIVITY_LOGGER)
    traffic = _traffic_logger(logger)

    def close(self) -> None:
        return None

    def __enter__(self) -> NullActivityLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None
