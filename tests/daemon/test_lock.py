"""Single-instance lock and socket-path guards (THREAT_MODEL F-2), on real files and sockets."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon_harness import needs_root

from inferd.daemon.lock import InstanceLock, LockError, read_lock_holder
from inferd.daemon.net.paths import SocketPathError, prepare_socket_path, remove_socket_file

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


# --------------------------------------------------------------------------- #
# InstanceLock
# --------------------------------------------------------------------------- #


def test_acquire_release_reacquire(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    lock = InstanceLock.acquire(path)
    assert lock.held
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()
    assert not lock.held
    lock.release()  # idempotent

    again = InstanceLock.acquire(path)
    try:
        assert again.held
    finally:
        again.release()
    # The file is the lock's name, not the lock: it stays behind.
    assert path.is_file()


def test_acquire_replaces_a_leftover_pid(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    path.write_text("999999999999\n")  # longer than our pid: must not leave a tail
    with InstanceLock.acquire(path):
        assert path.read_text() == f"{os.getpid()}\n"
    assert path.read_text() == ""  # cleared on release


def test_context_manager_releases(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    with InstanceLock.acquire(path) as lock:
        assert lock.held
    assert not lock.held
    InstanceLock.acquire(path).release()


def test_second_acquire_in_same_process_fails(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    with InstanceLock.acquire(path):
        with pytest.raises(LockError, match="already holds the lock"):
            InstanceLock.acquire(path)


def test_second_acquire_in_another_process_fails_naming_us(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    code = """
        import sys
        from inferd.daemon.lock import InstanceLock, LockError
        try:
            InstanceLock.acquire(sys.argv[1])
        except LockError as exc:
            print(exc)
            sys.exit(3)
        print("acquired")
    """
    with InstanceLock.acquire(path):
        result = _run_python(code, str(path))
        assert result.returncode == 3, result.stdout + result.stderr
        assert result.stdout.strip() == (
            f"another inferd already holds the lock at {path} (pid {os.getpid()})"
        )
        # The failed attempt must not have clobbered our pid (no O_TRUNC).
        assert path.read_text() == f"{os.getpid()}\n"

    # Released: the other process now gets it.
    result = _run_python(code, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "acquired"


def test_lock_held_by_another_process_is_refused_here(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    code = """
        import sys
        from inferd.daemon.lock import InstanceLock
        lock = InstanceLock.acquire(sys.argv[1])
        print("held", flush=True)
        sys.stdin.readline()
        lock.release()
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(LockError) as info:
            InstanceLock.acquire(path)
        assert f"(pid {child.pid})" in str(info.value)
        assert read_lock_holder(path) == child.pid
    finally:
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()
    InstanceLock.acquire(path).release()


def test_symlink_at_lock_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    link = tmp_path / "inferd.lock"
    link.symlink_to(target)
    with pytest.raises(LockError) as info:
        InstanceLock.acquire(link)
    assert str(info.value) == f"refusing lock path {link}: it is a symlink"
    assert target.read_text() == "precious\n"
    assert link.is_symlink()


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "inferd.lock"
    link.symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(LockError, match="it is a symlink"):
        InstanceLock.acquire(link)
    assert not (tmp_path / "does-not-exist").exists()


def test_directory_at_lock_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    path.mkdir()
    with pytest.raises(LockError) as info:
        InstanceLock.acquire(path)
    assert str(info.value) == f"refusing lock path {path}: it is not a regular file"


def test_fifo_at_lock_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    os.mkfifo(path)
    with pytest.raises(LockError, match="it is not a regular file"):
        InstanceLock.acquire(path)


def test_lock_parent_directory_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "run" / "inferd" / "inferd.lock"
    with InstanceLock.acquire(path):
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_read_lock_holder(tmp_path: Path) -> None:
    path = tmp_path / "inferd.lock"
    assert read_lock_holder(path) is None  # no file at all
    lock = InstanceLock.acquire(path)
    try:
        assert read_lock_holder(path) == os.getpid()
    finally:
        lock.release()
    assert read_lock_holder(path) is None
    # A pid in an unlocked file is a leftover, not a holder.
    path.write_text("4242\n")
    assert read_lock_holder(path) is None
    # The probe must not have left a lock behind.
    InstanceLock.acquire(path).release()


# --------------------------------------------------------------------------- #
# prepare_socket_path / remove_socket_file
# --------------------------------------------------------------------------- #


def _bound_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def test_missing_socket_path_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    prepare_socket_path(path)
    assert not path.exists()


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "infer.sock"
    _bound_socket(path).close()  # closed without unlinking: a crashed daemon's leftover
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    prepare_socket_path(path)
    assert not os.path.lexists(path)
    # And the path is now bindable.
    sock = _bound_socket(path)
    sock.close()


def test_live_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "infer.sock"
    server = _bound_socket(path)
    server.listen(1)
    try:
        with pytest.raises(SocketPathError) as info:
            prepare_socket_path(path)
        assert str(info.value) == f"{path} is in use by a running process"
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()


def test_symlink_at_socket_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    link = tmp_path / "infer.sock"
    link.symlink_to(target)
    with pytest.raises(SocketPathError, match="it is a symlink"):
        prepare_socket_path(link)
    assert link.is_symlink()
    assert target.read_text() == "keep me"


def test_symlink_to_stale_socket_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.sock"
    _bound_socket(real).close()
    link = tmp_path / "infer.sock"
    link.symlink_to(real)
    with pytest.raises(SocketPathError, match="it is a symlink"):
        prepare_socket_path(link)
    assert os.path.lexists(real)


def test_directory_at_socket_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "infer.sock"
    path.mkdir()
    with pytest.raises(SocketPathError, match="it is a directory"):
        prepare_socket_path(path)
    assert path.is_dir()


def test_regular_file_at_socket_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "infer.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketPathError, match="not a socket"):
        prepare_socket_path(path)
    assert path.read_text() == "not a socket"


def test_socket_parent_created_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "rt" / "inferd" / "admin.sock"
        prepare_socket_path(path)
    finally:
        os.umask(old)
    assert path.parent.is_dir()
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_existing_parent_mode_is_left_alone(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o750)
    prepare_socket_path(parent / "infer.sock")
    assert stat.S_IMODE(os.stat(parent).st_mode) == 0o750


def test_remove_socket_file_only_removes_sockets(tmp_path: Path) -> None:
    sock_path = tmp_path / "infer.sock"
    _bound_socket(sock_path).close()
    assert remove_socket_file(sock_path) is True
    assert not os.path.lexists(sock_path)
    assert remove_socket_file(sock_path) is False  # already gone

    regular = tmp_path / "notes.txt"
    regular.write_text("x")
    assert remove_socket_file(regular) is False
    assert regular.exists()

    real = tmp_path / "real.sock"
    _bound_socket(real).close()
    link = tmp_path / "link.sock"
    link.symlink_to(real)
    assert remove_socket_file(link) is False
    assert link.is_symlink()
    assert os.path.lexists(real)


@needs_root("give a directory to another user")
def test_socket_dir_owned_by_another_user_is_refused(tmp_path):
    """F-2: another user's directory could swap our socket files."""
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(SocketPathError, match="owned by uid 65534"):
        prepare_socket_path(foreign / "infer.sock")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(SocketPathError, match="others may write"):
        prepare_socket_path(open_dir / "infer.sock")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # like /tmp: allowed
    prepare_socket_path(sticky / "infer.sock")
