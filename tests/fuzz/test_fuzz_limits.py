"""Fuzzing the defences of issue 8 ("hostile clients, round two") against their references.

* `json_values_bound` (the pre-parse scan behind MAX_JSON_VALUES) is an upper bound of
  the real number of JSON values and keys, for any document and any string content
  (escapes, quotes, brackets and commas inside strings included); a line below the scan
  threshold can never be refused by it.
* The linear JWT redaction replaces exactly what the old regex replaced, on random text
  built from the characters that matter (`eyJ`, dots, dashes, escapes).
* `clip` never returns more than the cap plus its marker, never raises, and never leaves a
  secret's prefix at the cut.
* The TCP auth-frame parser and key comparison never raise, whatever the bytes.

All seeds are fixed per test (derandomize), as in test_fuzz_wire.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.daemon.observe import activity
from inferd.proto import limits
from inferd.proto.auth import keys_match, parse_auth_key

FAST = settings(deadline=None, max_examples=400, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---- json_values_bound ----------------------------------------------------------------------

tricky_text = st.lists(st.sampled_from(list('ab"\\,[]{}:é\n\u2028') + ['\\"', "\\\\"]), max_size=12).map("".join)
json_docs = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(tricky_text, inner, max_size=5),
    max_leaves=40,
)


def real_count(value: Any) -> int:
    """JSON values in `value`, object keys counted as values too."""
    if isinstance(value, dict):
        return 1 + sum(1 + real_count(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(real_count(v) for v in value)
    return 1


@FAST
@given(doc=json_docs, ascii_only=st.booleans(), spaced=st.booleans())
def test_json_values_bound_is_an_upper_bound(doc: Any, ascii_only: bool, spaced: bool) -> None:
    separators = (", ", ": ") if spaced else (",", ":")
    line = json.dumps(doc, ensure_ascii=ascii_only, separators=separators).encode()
    assert limits.json_values_bound(line) >= real_count(doc)


@FAST
@given(doc=json_docs)
def test_short_lines_are_never_refused_by_the_scan(doc: Any) -> None:
    line = json.dumps(doc).encode()[: limits.JSON_SCAN_THRESHOLD - 1]
    limits.check_json_budget(line)  # must not raise, whatever the (possibly cut) line


def test_a_line_just_below_the_threshold_cannot_reach_the_limit() -> None:
    # The densest lines: a string per two bytes, a separator per byte.
    for unit in (b'"",', b"[", b",", b"{"):
        line = unit * ((limits.JSON_SCAN_THRESHOLD - 1) // len(unit))
        assert limits.json_values_bound(line) <= limits.MAX_JSON_VALUES, unit


# ---- the JWT rule against the regex it replaced -----------------------------------------------

OLD_JWT = re.compile(activity._BOUNDARY + r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
jwt_soup = st.lists(st.sampled_from(["eyJ", "a", "Z", "0", ".", "-", "_", " ", "\\n", "\\u001b", "\\", "é", '"']),
                    max_size=40).map("".join)


@FAST
@given(text=jwt_soup)
def test_linear_jwt_rule_matches_the_old_regex(text: str) -> None:
    assert activity._redact_jwts(text) == OLD_JWT.sub("[REDACTED:jwt]", text)


# ---- clip ----------------------------------------------------------------------------------

clip_text = st.lists(st.sampled_from(["word", " ", "sk-1234567890abcdefghij", "é", "\U0001f600", "\ud800", "x" * 50,
                                      "password=hunter22", ",", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc"]),
                     max_size=120).map("".join)


@FAST
@given(text=clip_text, limit=st.integers(16, 600))
def test_clip_is_bounded_and_leaves_no_secret_prefix(text: str, limit: int) -> None:
    out = activity.clip(text, limit)
    head, _, marker = out.partition("…[+")
    assert len(head.encode("utf-8", "surrogatepass")) <= limit + 64  # redaction marks may be longer than what they hide
    if marker:
        assert marker.endswith(" bytes]") and int(marker[: -len(" bytes]")]) > 0
    # What redaction hides in the whole text, clipping must not reveal in part: every
    # secret drawn here contains one of these fragments.
    hidden = activity.redact(text)
    for fragment in ("sk-1", "hunter", "eyJhb"):
        if fragment not in hidden:
            assert fragment not in head, (fragment, head)


# ---- auth frame --------------------------------------------------------------------------------

@FAST
@given(raw=st.binary(max_size=200) | st.text(max_size=60).map(
    lambda t: json.dumps({"type": "auth", "key": t}).encode("utf-8", "surrogatepass")))
def test_auth_parser_never_raises(raw: bytes) -> None:
    key = parse_auth_key(raw)
    assert key is None or isinstance(key, str)
    if key is not None:
        assert keys_match(key, key) and not keys_match(key, key + "x")
