"""Print the fuzz case counts in the terminal summary (also without -s)."""

from __future__ import annotations

import sys


def pytest_terminal_summary(terminalreporter) -> None:
    module = sys.modules.get("test_fuzz_wire")
    if module is None or not getattr(module, "CASES", None):
        return
    terminalreporter.section("hypothesis cases per test (tests/fuzz)")
    for line in module.summary_lines():
        terminalreporter.write_line(line)
