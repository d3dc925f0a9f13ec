"""Errors raised by the client library.

Every failure of an open connection is a ClientError (seed 003): a reset or broken
connection mid-request is ConnectionLost, which is also the builtin ConnectionError
(so `except OSError` keeps working). Dialing is the one place platform errors are
left as they are (ConnectionRefusedError, FileNotFoundError, ...) so
`is_transient_dial_error` and callers can tell "daemon not up yet" from "you may not
talk to it"; `dial_and_wait_ready` turns them into WaitError.

Timeouts are the exception to that rule: they are raised as our own types, which
are at once ClientError (so `except ClientError` sees every failure of the
library) and the builtin TimeoutError (so `except TimeoutError` keeps working,
and `is_transient_dial_error` treats a connect that timed out as "retry").
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class for protocol-level failures seen by a client."""


class ConnectionLost(ClientError, ConnectionError):
    """The connection failed under a request (reset by the peer, broken pipe): the
    request did not complete. Also the builtin ConnectionError."""

    def __init__(self, message: str) -> None:
        # One argument only: OSError reads two as (errno, strerror).
        super().__init__(message)


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


class ClientTimeout(ClientError, TimeoutError):
    """A connect, read or write did not finish in time; the connection is closed.

    `timeout` is the limit in seconds that expired. A request that timed out may
    still have reached the daemon: closing the connection is what tells the daemon
    to stop working on it (protocol §7.3).
    """

    def __init__(self, message: str, timeout: float | None = None) -> None:
        # One argument only: OSError reads two as (errno, strerror).
        super().__init__(message)
        self.timeout = timeout


class ConnectTimeout(ClientTimeout):
    """The connection was not established within `connect_timeout`.

    Raised for a daemon whose accept queue is full (a wedged daemon) or a TCP
    handshake that gets no answer. `dial_and_wait_ready` retries it.
    """


class ReadTimeout(ClientTimeout):
    """No complete frame arrived within `read_timeout` seconds."""


class WriteTimeout(ClientTimeout):
    """The daemon did not take a request within `write_timeout` seconds (it stopped reading)."""
