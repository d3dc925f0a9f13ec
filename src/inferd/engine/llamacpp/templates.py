"""Chat prompt rendering: the model's own Jinja template, or a built-in family renderer.

Resolution (once, at load):
  setting "model"              -> the GGUF `tokenizer.chat_template` (error if absent)
  setting gemma|chatml|llama-3 -> that built-in
  no setting                   -> the GGUF template if present and compilable, else the
                                  built-in for `general.architecture`, else none (generation
                                  is then refused per request, embeddings still work).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

log = logging.getLogger("inferd.engine.llamacpp")

Message = dict[str, Any]

MODEL_TEMPLATE = "model"


class RenderError(Exception):
    """The conversation cannot be rendered; surfaces as invalid_request."""


class ChatRenderer(Protocol):
    name: str
    #: The Jinja source, for detecting tool-call and reasoning formats; None for built-ins.
    source: str | None
    #: Whether render() can declare `tools` itself (the template takes a `tools` variable).
    takes_tools: bool

    def render(self, messages: Sequence[Message], *, tools: list[dict[str, Any]] | None = None,
               enable_thinking: bool | None = None) -> str: ...


# ---- built-in families ---------------------------------------------------------------

class GemmaRenderer:
    """Gemma 2/3 turns. Gemma has no system role: the first system message is folded
    into the first user turn, separated by a blank line (as Gemma 3's own template)."""

    name = "gemma"
    source = None
    takes_tools = False
    BOS = "<bos>"

    def render(self, messages: Sequence[Message], **_: Any) -> str:
        out = [self.BOS]
        prefix = ""
        rest = list(messages)
        if rest and rest[0]["role"] == "system":
            system = rest.pop(0)["content"]
            if rest and rest[0]["role"] == "user":
                prefix = system + "\n\n"
            else:
                # Nothing to fold into: keep the instructions as a turn of their own.
                out.append(f"<start_of_turn>user\n{system.strip()}<end_of_turn>\n")
        for i, msg in enumerate(rest):
            role = "model" if msg["role"] == "assistant" else "user"
            lead = prefix if i == 0 else ""
            out.append(f"<start_of_turn>{role}\n{lead}{msg['content'].strip()}<end_of_turn>\n")
        out.append("<start_of_turn>model\n")
        return "".join(out)


class ChatMLRenderer:
    name = "chatml"
    source = None
    takes_tools = False

    def render(self, messages: Sequence[Message], **_: Any) -> str:
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        parts.append("<|im_start|>assistant\n")
        return "".join(parts)


class Llama3Renderer:
    name = "llama-3"
    source = None
    takes_tools = False
    BOS = "<|begin_of_text|>"

    def render(self, messages: Sequence[Message], **_: Any) -> str:
        parts = [self.BOS]
        for m in messages:
            parts.append(
                f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
            )
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return "".join(parts)


BUILTIN: dict[str, Callable[[], ChatRenderer]] = {
    "gemma": GemmaRenderer,
    "chatml": ChatMLRenderer,
    "llama-3": Llama3Renderer,
}
KNOWN_TEMPLATES: tuple[str, ...] = (MODEL_TEMPLATE, *BUILTIN)

_ARCH_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gemma", "gemma"),
    ("qwen", "chatml"),
    ("llama", "llama-3"),
)


def builtin_for_architecture(arch: str | None) -> str | None:
    if not arch:
        return None
    arch = arch.lower()
    for prefix, name in _ARCH_PREFIXES:
        if arch.startswith(prefix):
            return name
    return None


# ---- the model's own template (Jinja, sandboxed) -------------------------------------

class _TemplateRaised(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(value: object, indent: int | None = None) -> str:
    # Jinja's built-in tojson HTML-escapes; chat templates expect plain JSON.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class JinjaRenderer:
    """A GGUF `tokenizer.chat_template`, rendered the way HF transformers does."""

    name = MODEL_TEMPLATE

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        # Compile errors surface at load, not on the first request.
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token
        self.source = source
        # HF convention: a template that declares tools reads the `tools` variable.
        self.takes_tools = "tools" in source

    def render(self, messages: Sequence[Message], *, tools: list[dict[str, Any]] | None = None,
               enable_thinking: bool | None = None) -> str:
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = tools
        if enable_thinking is not None:
            extra["enable_thinking"] = enable_thinking
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
                **extra,
            )
        except _TemplateRaised as exc:
            raise RenderError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any template fault is the request's problem
            raise RenderError(f"{type(exc).__name__}: {exc}") from None


# ---- resolution -----------------------------------------------------------------------

def resolve_renderer(
    override: str | None,
    *,
    gguf_template: str | None,
    architecture: str | None,
    bos_token: str,
    eos_token: str,
) -> ChatRenderer | None:
    """Pick the renderer once at load. Raises ValueError for an unusable setting."""
    if override is not None:
        key = override.strip().lower()
        if key == MODEL_TEMPLATE:
            if not gguf_template:
                raise ValueError("chat_template 'model' requested but the GGUF has no tokenizer.chat_template")
            try:
                return JinjaRenderer(gguf_template, bos_token=bos_token, eos_token=eos_token)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"the GGUF chat template does not compile: {exc}") from None
        factory = BUILTIN.get(key)
        if factory is None:
            raise ValueError(
                f"unknown chat_template {override!r}; known: {', '.join(KNOWN_TEMPLATES)}"
            )
        return factory()

    fallback = builtin_for_architecture(architecture)
    if gguf_template:
        try:
            return JinjaRenderer(gguf_template, bos_token=bos_token, eos_token=eos_token)
        except Exception as exc:  # noqa: BLE001
            if fallback is None:
                raise ValueError(
                    f"the GGUF chat template does not compile ({exc}) and architecture "
                    f"{architecture!r} has no built-in renderer; set chat_template to one of "
                    f"{', '.join(BUILTIN)}"
                ) from None
            log.warning("GGUF chat template does not compile (%s); using built-in %s", exc, fallback)
    if fallback is None:
        return None
    return BUILTIN[fallback]()
