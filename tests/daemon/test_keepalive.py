"""keep_alive parsing: Ollama's semantics, one parser for every surface (issue 20)."""

import math

import pytest

from inferd.daemon.pipeline.keepalive import KeepAliveError, parse_keep_alive


@pytest.mark.parametrize("value, seconds", [
    (None, None), (0, 0.0), (30, 30.0), (2.5, 2.5), ("0", 0.0), ("300", 300.0),
    ("5m", 300.0), ("1h30m", 5400.0), ("90s", 90.0), ("1.5h", 5400.0), ("300ms", 0.3),
    ("-1", math.inf), (-1, math.inf), ("-5m", math.inf), (" 10s ", 10.0),
])
def test_durations_and_numbers(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "m", "5x", "1h-2m", "h5", True, [1], {"s": 1},
                                   "nan", float("nan"), "9" * 65])
def test_refusals_name_the_value(value):
    with pytest.raises(KeepAliveError, match="keep_alive"):
        parse_keep_alive(value)
