"""Single-instance lock: at most one inferd per lock file (THREAT_MODEL F-2).

The lock is the open file descriptor holding an OS lock, not the file's
existence: the kernel drops it when the process dies however it dies, so a
crashed daemon never leaves a lock that needs manual cleanup. For the same
reason the file is never deleted (deleting it would let two daemons lock two
different inodes under one name). The holder writes its pid into the file so a
second daemon, or `inferd doctor`, can say who is in the way.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from types import TracebackType

from ..oslock import try_lock, unlock
from .net.paths import ensure_private_dir

__all__ = ["InstanceLock", "LockError", "read_lock_holder"]

_WINDOWS = sys.platform == "win32"

# Windows byte-range locks are mandatory: a locked byte cannot be read by anyone
# else. Lock one byte far past the pid so it stays readable.
_WIN_LOCK_OFFSET = 1 << 30

# O_NOFOLLOW closes the gap between the lstat check and the open (F-2).
# O_NONBLOCK keeps a FIFO swapped in during that gap from hanging the open.
_OPEN_FLAGS = (
    os.O_RDWR
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_PROBE_FLAGS = (
    (os.O_RDWR if _WINDOWS else os.O_RDONLY)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class LockError(OSError):
    """The lock cannot be taken; the message names the path and the reason."""


def _check_path(path: Path) -> None:
    """F-2: refuse a planted symlink or a non-file before opening anything."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise LockError(f"refusing lock path {path}: it is a symlink")
    if not stat.S_ISREG(st.st_mode):
        raise LockError(f"refusing lock path {path}: it is not a regular file")


def _try_lock(fd: int, *, shared: bool = False) -> bool:
    return try_lock(fd, shared=shared, offset=_WIN_LOCK_OFFSET)


def _unlock(fd: int) -> None:
    unlock(fd, offset=_WIN_LOCK_OFFSET)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 64)
    except OSError:
        return None
    first = data.split(b"\n", 1)[0].strip()
    if not first.isdigit():
        return None
    pid = int(first)
    return pid if pid > 0 else None


class InstanceLock:
    """A held single-instance lock. Obtain one with `InstanceLock.acquire(path)`."""

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd: int | None = fd
        self._pid = os.getpid()

    @classmethod
    def acquire(cls, path: str | Path) -> InstanceLock:
        """Take the lock at `path` or raise LockError at once (never waits)."""
        path = Path(path)
        ensure_private_dir(path.parent)
        _check_path(path)
        try:
            # No O_TRUNC: the pid of a current holder must survive our attempt.
            fd = os.open(path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            if os.path.islink(path):
                raise LockError(f"refusing lock path {path}: it is a symlink") from exc
            if os.path.isdir(path):
                raise LockError(f"refusing lock path {path}: it is not a regular file") from exc
            raise LockError(f"cannot open lock file {path}: {exc.strerror or exc}") from exc
        try:
            # Something may have been swapped in after the lstat check.
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LockError(f"refusing lock path {path}: it is not a regular file")
            if not _try_lock(fd):
                holder = _read_pid(fd)
                who = f"pid {holder}" if holder is not None else "pid unknown"
                raise LockError(f"another inferd already holds the lock at {path} ({who})")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays; see the module docstring."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Clear our pid while still holding the lock, so nobody reads a
            # stale pid from a file that a new holder has not written yet.
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            _unlock(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"InstanceLock({str(self._path)!r}, {state})"


def read_lock_holder(path: str | Path) -> int | None:
    """The pid recorded in the lock file at `path`, if the lock is currently held.

    A pid left in an unlocked file means nothing (its writer is gone), so the
    lock is probed first. The probe briefly takes a shared lock when nobody
    holds it; an `acquire` racing with that instant fails once and can retry.
    Returns None for a missing, unreadable, symlinked or unheld lock file.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        fd = os.open(path, _PROBE_FLAGS)
    except OSError:
        return None
    try:
        if _try_lock(fd, shared=True):
            _unlock(fd)
            return None
        return _read_pid(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
