"""Slash commands of `inferd chat`, read the same way in the text and the `--json` chat.

A line is a command when it is `/name` or `/name argument` with a lowercase name
(`/reset`, `/exit`, `/model NAME`); anything else starting with a slash, such as
`/usr/bin/env?`, is a prompt. `//text` sends `/text` to the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMMANDS = ("/reset", "/exit", "/model NAME")
_COMMAND = re.compile(r"/([a-z][a-z0-9_-]*)(?:\s+(.*))?")


@dataclass(frozen=True)
class Command:
    name: str  # with its slash: "/model"
    arg: str = ""


def parse_command(line: str) -> Command | None:
    """The command a line holds, or None when it is a prompt."""
    match = _COMMAND.fullmatch(line.strip())
    if match is None:
        return None
    return Command(name="/" + match.group(1), arg=(match.group(2) or "").strip())


def prompt_text(line: str) -> str:
    """A prompt line as the model gets it: `//text` is `/text`."""
    return line[1:] if line.startswith("//") else line


def unknown(command: Command) -> str:
    return f"unknown command {command.name}; the commands are {', '.join(COMMANDS)}"
