"""Chat-output machinery shared by engines: tool-call formats, reasoning split, grammars.

Pure Python over the engine contract (events.py, request.py): no sockets, no daemon, no
model. `llama_cpp` is imported only when a grammar is built from a JSON Schema.
"""

from .schema import SchemaError, response_format_grammar
from .thinking import (
    GEMMA4_CHANNEL,
    THINK_TAGS,
    OutputParser,
    ThinkingSplitter,
    detect_thinking,
    prompt_opens_thinking,
)
from .toolcalls import (
    FORMATS,
    ToolCallFormat,
    ToolCallMalformed,
    ToolCallParser,
    detect,
    get_format,
    random_call_id,
    tool_call_grammar,
)

__all__ = [
    "FORMATS",
    "GEMMA4_CHANNEL",
    "THINK_TAGS",
    "OutputParser",
    "SchemaError",
    "ThinkingSplitter",
    "ToolCallFormat",
    "ToolCallMalformed",
    "ToolCallParser",
    "detect",
    "detect_thinking",
    "get_format",
    "prompt_opens_thinking",
    "random_call_id",
    "response_format_grammar",
    "tool_call_grammar",
]
