"""Advisory file locks on an open descriptor, the same way everywhere inferd locks.

flock on POSIX (released by the kernel when the process dies, however it dies);
a one-byte msvcrt lock on Windows, at `offset` so that the bytes before it stay
readable (Windows byte-range locks are mandatory).
"""

from __future__ import annotations

import os

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def try_lock(fd: int, *, shared: bool = False, offset: int = 0) -> bool:
        """Take the lock without waiting; False when someone else holds it."""
        os.lseek(fd, offset, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def unlock(fd: int, *, offset: int = 0) -> None:
        os.lseek(fd, offset, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass

else:
    import fcntl

    def try_lock(fd: int, *, shared: bool = False, offset: int = 0) -> bool:
        """Take the lock without waiting; False when someone else holds it."""
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int, *, offset: int = 0) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
