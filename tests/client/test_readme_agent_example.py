"""The README's agent loop and mock script, run as written against a real daemon.

The Python block under "Agents: tools, thinking, structured output" is executed in a
subprocess whose default v2 socket is a scripted mock daemon's (the README's own JSON
config): the loop must call the tool, send the result, get the answer and end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from daemon_harness import cleanup, short_tmpdir, start_daemon

README = Path(__file__).resolve().parents[2] / "README.md"


def agent_section() -> str:
    text = README.read_text()
    start = text.index("## Agents: tools, thinking, structured output")
    return text[start:text.index("\n## ", start + 1)]


async def test_the_readme_agent_loop_runs_to_its_end_against_the_scripted_mock():
    section = agent_section()
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    config = json.loads(re.findall(r"```json\n(.*?)```", section, re.S)[0])
    d = short_tmpdir()
    (d / "config.json").write_text(json.dumps(config))
    runtime = d / "run"
    (runtime / "inferd").mkdir(parents=True, mode=0o700)
    daemon = await start_daemon(d, config=str(d / "config.json"), v2=True,
                                v2_addr=str(runtime / "inferd" / "infer.v2.sock"))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        lines = out.decode().splitlines()
        # First turn: the text before the call; second turn: the answer to the result.
        assert lines[0].startswith("Checking.") and lines[1].startswith("It is 21 C in Paris.")
        assert len(lines) == 2
    finally:
        await daemon.stop()
        cleanup(d)
