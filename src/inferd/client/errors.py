"""Errors raised by the client library: every failure of the library is a ClientError.

I/O failures (a refused or reset connection, a broken pipe, a socket that does not
exist, ...) are raised as ClientIOError subclasses that are *also* the builtin
OSError subclass the platform raised (ConnectionRefused is a ConnectionRefusedError,
SocketNotFound a FileNotFoundError, ...), with the same errno. So `except ClientError`
sees every failure, while `except ConnectionError` and `is_transient_dial_error`
keep telling "daemon not up yet" from "you may not talk to it" (seed 003: the
client's errors are one taxonomy, not a ClientError beside a raw io error).

Timeouts are raised as our own types too, which are at once ClientError and the
builtin TimeoutError (so `except TimeoutError` keeps working, and
`is_transient_dial_error` treats a connect that timed out as "retry").
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


class ClientIOError(ClientError, OSError):
    """The connection failed at the operating system's level; `errno` is the platform's.

    Raised instead of the bare OSError by every dial, send and receive of this
    library (`as_client_error`); the original is the `__cause__`.
    """


class ConnectionRefused(ClientIOError, ConnectionRefusedError):
    """Nothing accepts connections at the address (yet)."""


class ConnectionReset(ClientIOError, ConnectionResetError):
    """The daemon's end reset the connection (it crashed, or dropped us mid-stream)."""


class ConnectionAborted(ClientIOError, ConnectionAbortedError):
    """The connection was aborted on this machine's side."""


class BrokenPipe(ClientIOError, BrokenPipeError):
    """A write found the daemon's end already closed."""


class SocketNotFound(ClientIOError, FileNotFoundError):
    """The socket or pipe does not exist: the daemon is not (yet) listening there."""


class PermissionDenied(ClientIOError, PermissionError):
    """The socket exists but this user may not connect to it (F-1: 0600 sockets)."""


# Most specific first: ConnectionRefusedError etc. are ConnectionErrors too.
_IO_KINDS: tuple[tuple[type[OSError], type[ClientIOError]], ...] = (
    (ConnectionRefusedError, ConnectionRefused),
    (ConnectionResetError, ConnectionReset),
    (ConnectionAbortedError, ConnectionAborted),
    (BrokenPipeError, BrokenPipe),
    (FileNotFoundError, SocketNotFound),
    (PermissionError, PermissionDenied),
)


def as_client_error(exc: OSError) -> ClientError:
    """`exc` as this library's error: unchanged if it is one already, else the
    ClientIOError of its kind carrying the same errno, message and file name."""
    if isinstance(exc, ClientError):
        return exc
    kind = next((ours for theirs, ours in _IO_KINDS if isinstance(exc, theirs)), ClientIOError)
    if exc.errno is None:
        # One argument only: OSError reads two as (errno, strerror).
        return kind(str(exc) or type(exc).__name__)
    winerror = getattr(exc, "winerror", None)
    if winerror is not None:  # Windows: keep what is_transient_dial_error reads
        return kind(exc.errno, exc.strerror, exc.filename, winerror)
    if exc.filename is not None:
        return kind(exc.errno, exc.strerror, exc.filename)
    return kind(exc.errno, exc.strerror)
