"""Errors raised by the client library.

Transport failures are left as the OSError subclasses the platform raises
(ConnectionRefusedError, FileNotFoundError, ...) so `is_transient_dial_error` and
callers can tell "daemon not up yet" from "you may not talk to it".
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class for protocol-level failures seen by a client."""


class UnexpectedEof(ClientError):
    """The daemon closed the connection before the terminal frame or response.

    Upstream treats this like `backend_unavailable`: the request did not complete.
    """

    def __init__(self, message: str = "daemon closed the connection before a terminal frame") -> None:
        super().__init__(message)


class ClientDecodeError(ClientError):
    """A frame from the daemon was not valid JSON of the expected shape."""


class AdminClosed(ClientError):
    """The admin stream ended (daemon exited, drained, or dropped a lagging subscriber)."""

    def __init__(self, message: str = "admin connection closed") -> None:
        super().__init__(message)
