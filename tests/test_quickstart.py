"""The README's Quickstart and CI agree (ADR 0035 addendum 6).

CI must run the README's test command; both commands build llama-cpp-python the
same way, since pip keeps the first build it makes and reuses it for the other.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quickstart() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def _env(command: str, name: str) -> str | None:
    for word in shlex.split(command):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def test_quickstart_is_two_commands_serve_then_tests() -> None:
    commands = _quickstart()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("inferd serve")
    assert "pytest" in commands[1]


def test_both_commands_build_llama_cpp_with_generic_tuning() -> None:
    serve, tests = _quickstart()
    args = _env(serve, "CMAKE_ARGS")
    assert args is not None and "-DCMAKE_C_FLAGS=-mtune=generic" in args.split()
    assert "-DCMAKE_CXX_FLAGS=-mtune=generic" in args.split()
    assert _env(tests, "CMAKE_ARGS") == args


def test_ci_runs_the_readme_test_command() -> None:
    tests = _quickstart()[1]
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(ci_lines) == 1
    # CI may only quieten pip; every other word is the README's.
    assert shlex.split(ci_lines[0].replace("pip install -q ", "pip install ")) == shlex.split(tests)
