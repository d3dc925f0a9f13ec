"""F-14: the daemon and its client never spawn processes.

A local daemon that runs what a request says would be a remote-code-execution path
for every app of the user; so no module under src/ may import a process-spawning API.
The test parses every source file (comments and strings cannot fool it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "inferd"
FORBIDDEN_MODULES = {"subprocess", "pty", "multiprocessing", "pexpect"}
FORBIDDEN_OS = {"system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
                "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
                "spawnlpe", "posix_spawn", "posix_spawnp", "fork", "forkpty"}


def offences(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(node.module)
            if node.module == "os":
                found += [f"os.{a.name}" for a in node.names if a.name in FORBIDDEN_OS]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr in FORBIDDEN_OS:
                found.append(f"os.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("create_subprocess_exec", "create_subprocess_shell", "subprocess_exec"):
                found.append(node.func.attr)
    return found


#: The one spawn site (ADR 0019): our interpreter running one of our engine modules.
SPAWN_SITE = "engine/llamacpp/spawn.py"


def test_no_module_spawns_processes_but_the_one_spawn_site():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    bad = {str(f.relative_to(SRC)): o for f in files if (o := offences(ast.parse(f.read_text(), str(f))))}
    assert bad == {SPAWN_SITE: ["subprocess"]}


def test_the_spawn_site_starts_only_our_engine_modules():
    from inferd.engine.llamacpp import spawn

    assert all(m.startswith("inferd.engine.") for m in spawn.ENGINE_MODULES)
    for module in ("os", "inferd.engine.llamacpp.nonexistent", "-c"):
        with pytest.raises(ValueError, match="not an engine module"):
            spawn.run_engine_module(module, "", 1.0)
    # No shell and no argument from the caller but the module name: the argv is fixed.
    source = (SRC / SPAWN_SITE).read_text()
    assert source.count("shell=False") == 2 and "return [sys.executable, \"-m\", module]" in source


def test_the_scanner_catches_each_form():
    sample = ("import subprocess\nfrom os import system\nimport os\nos.execv('x', [])\n"
              "async def f(loop):\n    await loop.subprocess_exec(None)\n")
    assert offences(ast.parse(sample)) == ["subprocess", "os.system", "os.execv", "subprocess_exec"]
