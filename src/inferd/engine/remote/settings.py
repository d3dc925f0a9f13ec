"""Settings of the remote OpenAI-compatible backend.

Kept free of any httpx import so the daemon's config layer can build and validate
one without the HTTP stack. The settings never hold an API key: `api_key_env` names
the environment variable that does, read at each request (so a rotated key works
without a reload, and a key never lands in a config dump or a log line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_FIRST_TOKEN_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_CONCURRENCY = 4

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class OpenAISettings:
    #: The API root. Either with its version segment, as OpenAI's own clients take it
    #: (`http://127.0.0.1:8000/v1`, `https://api.example.com/openai/v1`), or a bare
    #: host (`http://127.0.0.1:8000`), which means `<host>/v1`. Any other path is
    #: used as given: `{base_url}/chat/completions`, `{base_url}/models`.
    base_url: str
    #: Model name sent upstream; None = the first entry of `GET {base}/models`.
    model: str | None = None
    #: NAME of the environment variable holding the bearer key; None = no
    #: Authorization header.
    api_key_env: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: From sending the request to the first streamed content (covers prompt processing).
    first_token_timeout: float = DEFAULT_FIRST_TOKEN_TIMEOUT
    #: Longest silence between two streamed chunks once content flows.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Requests in flight at once; the daemon grants this backend that many permits.
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    #: PEM bundle of the CA(s) to trust for an https base_url; None = system trust.
    ca_file: str | Path | None = None
    #: Display name for status and logs; None = the resolved model name.
    label: str | None = None
    #: Offer embeddings (`POST {base}/embeddings`); not every server has the route.
    embed: bool = True
    #: Declare that the remote model streams reasoning (`reasoning_content`); servers
    #: do not advertise it, so only the operator can tell.
    thinking: bool = False
    #: Also send the non-OpenAI sampling fields that vLLM, llama-server and
    #: llama-cpp-python's server accept (`top_k`, `chat_template_kwargs.enable_thinking`).
    #: Off by default: strict hosted APIs answer 400 to unknown fields.
    sampling_extensions: bool = False

    def __post_init__(self) -> None:
        self.base_url = api_root(self.base_url)
        for field_name in ("connect_timeout", "first_token_timeout", "idle_timeout"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{field_name} must be a positive number of seconds, got {value!r}")
        if not isinstance(self.max_concurrency, int) or isinstance(self.max_concurrency, bool) \
                or self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {self.max_concurrency!r}")
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise ValueError(f"api_key_env must be the name of an environment variable, got {self.api_key_env!r}")
        if self.model is not None and not self.model.strip():
            raise ValueError("model must not be empty (omit it to use the remote's first model)")


def api_root(base_url: str) -> str:
    """The normalised API root: scheme, host, port and path, no trailing slash.

    A URL carrying credentials or a query is refused: secrets come from the
    environment only, and the URL appears in status and error messages.
    """
    raw = base_url.strip()
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    if not parts.hostname:
        raise ValueError(f"base_url has no host: {base_url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("base_url must not carry credentials; name an environment variable in api_key_env")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not have a query or fragment: {base_url!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"base_url has an invalid port: {base_url!r}") from None
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
