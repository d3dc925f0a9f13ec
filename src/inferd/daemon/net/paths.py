"""Filesystem guards for the daemon's runtime paths (Unix socket files, their directory).

A socket path lives in a directory other local users might be able to write to
(`/tmp/inferd-<uid>/` is the last-resort default), so nothing here follows a
symlink or deletes something it did not positively identify as a dead socket
(THREAT_MODEL F-2).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

__all__ = [
    "SocketPathError",
    "ensure_private_dir",
    "prepare_socket_path",
    "remove_socket_file",
]

# How long the liveness probe of an existing socket file may take. A live
# listener with a full backlog makes connect() wait; that still means "in use".
_PROBE_TIMEOUT_S = 1.0


class SocketPathError(OSError):
    """A socket path cannot be used safely; the message says why."""


def ensure_private_dir(directory: str | Path) -> None:
    """Create `directory` and its missing parents, each with mode 0700 whatever the umask;
    check an existing leaf without following symlinks (THREAT_MODEL F-2, issue 8 item 8).

    An existing directory is left with its mode: tightening e.g. `/tmp` or a systemd
    `RuntimeDirectory` the operator chose is not ours to do. It must be a directory,
    or a symlink that we or root made to one, owned by us or root and not writable by
    others unless sticky. Existing ancestors are the operator's and are not judged.
    """
    directory = Path(directory)
    missing: list[Path] = []
    probe = directory
    while not _lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for component in reversed(missing):  # top-down: parents first
        try:
            os.mkdir(component, 0o700)
        except FileExistsError:
            # Lost a race with another creator: judge what is there now.
            _check_dir(component, created=False)
            continue
        # mkdir's mode is filtered through the umask (0777 under umask 000 before this
        # was done for every component, not only the leaf): set the bits explicitly.
        os.chmod(component, 0o700)
        _check_dir(component, created=True)
    _check_dir(directory, created=False)


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True  # a parent is a file: mkdir will say so
    return True


def _check_dir(directory: Path, *, created: bool) -> None:
    """F-2: lstat first: a symlink another user planted where our directory should be
    would otherwise lead our sockets and lock into a directory of their choosing (the
    old check stat()ed through it, so a link to any directory we own passed). A link
    we (or root) made is the operator's choice: where it leads is judged instead."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        raise SocketPathError(f"socket directory {directory} vanished while it was being created") from None
    if stat.S_ISLNK(st.st_mode):
        owner_ok = not hasattr(os, "getuid") or st.st_uid in (os.getuid(), 0)
        if created or not owner_ok:
            raise SocketPathError(f"refusing socket directory {directory}: it is a symlink owned by uid {st.st_uid}")
        try:
            st = os.stat(directory)
        except OSError as exc:
            raise SocketPathError(f"refusing socket directory {directory}: a symlink to nowhere ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"refusing socket directory {directory}: it is not a directory")
    _refuse_foreign_dir(directory, st)
    if created and hasattr(os, "getuid") and stat.S_IMODE(st.st_mode) != 0o700:
        raise SocketPathError(f"socket directory {directory} did not get mode 0700")


def _refuse_foreign_dir(directory: Path, st: os.stat_result) -> None:
    """F-2: a directory another user controls could swap our socket files.

    Refused: a directory owned by another non-root user, or one that others may
    write to without the sticky bit (so they could rename our files). `/tmp`
    (root, sticky) and systemd's RuntimeDirectory (ours) pass.
    """
    if not hasattr(os, "getuid"):
        return
    if st.st_uid not in (os.getuid(), 0):
        raise SocketPathError(f"refusing socket directory {directory}: it is owned by uid {st.st_uid}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise SocketPathError(
            f"refusing socket directory {directory}: others may write to it (mode {stat.S_IMODE(st.st_mode):o})"
        )


def prepare_socket_path(path: str | Path) -> None:
    """Make `path` ready for bind(): create its directory, clear a stale socket file.

    Raises SocketPathError when the path is a symlink, a directory, another kind
    of file, or a socket some process is still listening on.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    # F-2: a planted symlink would make bind() or unlink() act on its target.
    if stat.S_ISLNK(st.st_mode):
        raise SocketPathError(f"refusing socket path {path}: it is a symlink")
    if stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"refusing socket path {path}: it is a directory")
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"refusing socket path {path}: it exists and is not a socket")

    if _socket_is_live(path):
        raise SocketPathError(f"{path} is in use by a running process")
    # Stale: left behind by a daemon that died without cleaning up. unlink()
    # removes the directory entry itself and never follows a link, so a swap
    # between the lstat above and here cannot redirect it.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (TimeoutError, BlockingIOError):
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        # EACCES and friends: we cannot tell, and the bind() would fail anyway.
        raise SocketPathError(f"cannot tell whether {path} is in use: {exc.strerror or exc}") from exc
    else:
        return True
    finally:
        probe.close()


def remove_socket_file(path: str | Path) -> bool:
    """Remove `path` if it is a socket file; return whether something was removed.

    Used on shutdown. Anything else at the path (symlink, regular file, nothing,
    or a path we cannot stat) is left alone, and errors are swallowed: cleanup
    must never turn a clean exit into a crash.
    """
    try:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            return False
        os.unlink(path)
    except OSError:
        return False
    return True
