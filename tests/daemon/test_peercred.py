"""Peer identity over real Unix sockets (THREAT_MODEL F-7).

The cross-user test drops a child process to nobody (65534), which needs root: for
anyone else it is skipped, saying so.
"""

from __future__ import annotations

import grp
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_harness import NOBODY, cleanup, needs_root, short_tmpdir

from inferd.daemon.net import peercred
from inferd.daemon.net.peercred import PeerCred, PeerPolicy, peer_credentials, resolve_group


def test_same_process_pair_reports_our_identity(tmp_path: Path) -> None:
    path = str(tmp_path / "peer.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        conn, _ = server.accept()
        with conn:
            seen_by_server = peer_credentials(conn)
            seen_by_client = peer_credentials(client)
    finally:
        client.close()
        server.close()
    me = PeerCred(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
    assert seen_by_server == me
    assert seen_by_client == me
    assert seen_by_server.label == f"unix:{os.getuid()}:{os.getpid()}"
    assert PeerPolicy().admits(seen_by_server)


def test_non_unix_and_broken_sockets_give_none() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        assert peer_credentials(conn) is None  # TCP has no kernel-vouched identity
    finally:
        conn.close()
        client.close()
        listener.close()

    closed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    closed.close()
    assert peer_credentials(closed) is None  # must not raise on a dead fd
    assert peer_credentials(object()) is None  # type: ignore[arg-type]


@pytest.fixture
def shared_socket_dir() -> Iterator[Path]:
    # pytest's tmp_path sits under a 0700 root-owned directory that nobody
    # cannot traverse; the cross-user test needs a world-searchable one.
    directory = short_tmpdir()
    os.chmod(directory, 0o755)
    try:
        yield directory
    finally:
        cleanup(directory)


_NOBODY_CLIENT = """
    import os, socket, sys
    os.setgroups([])
    os.setgid(int(sys.argv[2]))
    os.setuid(int(sys.argv[2]))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(b"x")
    s.recv(1)
"""


@needs_root("switch a child process to another user")
def test_peer_running_as_another_user(shared_socket_dir: Path) -> None:
    path = shared_socket_dir / "peer.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o777)
    server.listen(1)
    server.settimeout(30)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_NOBODY_CLIENT), str(path), str(NOBODY)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            assert conn.recv(1) == b"x"
            cred = peer_credentials(conn)
            conn.sendall(b"k")
    finally:
        server.close()
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err

    assert cred is not None
    assert cred.uid == NOBODY
    assert cred.gid == NOBODY
    assert cred.pid == child.pid
    assert cred.label == f"unix:{NOBODY}:{child.pid}"

    assert not PeerPolicy().admits(cred)
    assert PeerPolicy(allow_uids={NOBODY}).admits(cred)
    assert PeerPolicy(group_gid=NOBODY).admits(cred)
    assert not PeerPolicy(group_gid=NOBODY + 1).admits(cred)


# --------------------------------------------------------------------------- #
# Policy rules on synthetic identities
# --------------------------------------------------------------------------- #


def test_policy_own_uid_and_allow_list() -> None:
    policy = PeerPolicy(uid=1000, allow_uids=[1001])
    assert policy.allow_uids == frozenset({1001})
    assert policy.admits(PeerCred(1000, 1000, 10))
    assert policy.admits(PeerCred(1001, 1001, 11))
    assert not policy.admits(PeerCred(1002, 1002, 12))


def test_policy_root_needs_root_or_explicit_allow() -> None:
    root = PeerCred(0, 0, 1)
    assert not PeerPolicy(uid=1000).admits(root)
    # Membership of the shared group is not enough for root.
    assert not PeerPolicy(uid=1000, group_gid=0).admits(root)
    assert PeerPolicy(uid=1000, allow_uids={0}).admits(root)
    assert PeerPolicy(uid=0).admits(root)


def test_policy_supplementary_group(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    def fake_grouplist(user: str, gid: int) -> list[int]:
        calls.append((user, gid))
        return [gid, 4242]

    monkeypatch.setattr(peercred.os, "getgrouplist", fake_grouplist)
    peer = PeerCred(NOBODY, NOBODY, 99)
    assert PeerPolicy(uid=1000, group_gid=4242).admits(peer)
    assert calls == [("nobody", NOBODY)]
    assert not PeerPolicy(uid=1000, group_gid=4343).admits(peer)


def test_policy_effective_gid_alone_admits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The peer's effective gid counts even when the group database does not
    # list its user as a member (e.g. a setgid helper).
    monkeypatch.setattr(peercred.os, "getgrouplist", lambda user, gid: [NOBODY])
    assert PeerPolicy(uid=1000, group_gid=4242).admits(PeerCred(NOBODY, 4242, 99))
    assert not PeerPolicy(uid=1000, group_gid=4242).admits(PeerCred(NOBODY, NOBODY, 99))


def test_policy_group_lookup_failure_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(user: str, gid: int) -> list[int]:
        raise OSError("nss unavailable")

    monkeypatch.setattr(peercred.os, "getgrouplist", broken)
    assert not PeerPolicy(uid=1000, group_gid=4242).admits(PeerCred(NOBODY, NOBODY, 99))
    # A uid with no passwd entry has no supplementary groups either.
    assert not PeerPolicy(uid=1000, group_gid=4242).admits(PeerCred(3999999, 7, 99))


def test_policy_unknown_identity_depends_on_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    assert peercred.CREDENTIALS_SUPPORTED  # Linux can read peer credentials
    assert not PeerPolicy().admits(None)
    assert not PeerPolicy().admits(PeerCred(None, None, None))
    monkeypatch.setattr(peercred, "CREDENTIALS_SUPPORTED", False)
    assert PeerPolicy().admits(None)


def test_label_marks_unknown_parts() -> None:
    assert PeerCred(1000, 1000, 42).label == "unix:1000:42"
    assert PeerCred(1000, None, None).label == "unix:1000:?"


def test_resolve_group() -> None:
    gid = os.getgid()  # a group this machine surely has
    assert resolve_group(grp.getgrgid(gid).gr_name) == gid
    with pytest.raises(ValueError, match="unknown group 'no-such-group-inferd'"):
        resolve_group("no-such-group-inferd")
