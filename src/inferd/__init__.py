"""inferd: a local LLM inference daemon serving one warm GGUF model over local sockets."""

__version__ = "0.4.0"
