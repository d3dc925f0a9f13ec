"""The socket directory (daemon/net/paths.py; issue 8, THREAT_MODEL F-2)."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from daemon_harness import cleanup, short_tmpdir
from serve_child import records, serve_env, spawn_serve, write_mock_config

from inferd.daemon.net.paths import SocketPathError, ensure_private_dir, prepare_socket_path

NOBODY = 65534


def test_parents_are_created_0700_even_under_umask_000(tmp_path):
    """Item 8: every directory ensure_private_dir creates is 0700, not only the last one.
    Old code: makedirs left the parents 0777 under umask 000."""
    old = os.umask(0)
    try:
        prepare_socket_path(tmp_path / "a" / "b" / "c" / "infer.sock")
    finally:
        os.umask(old)
    for part in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(os.lstat(part).st_mode) == 0o700, part


def test_a_socket_dir_symlink_planted_by_another_user_is_refused(tmp_path):
    """Item 8 (F-2): the check uses lstat. A symlink owned by another user, pointing at a
    directory of ours, used to pass (stat followed it to our directory). A symlink we
    made ourselves is ours to make and is judged by where it leads."""
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    planted = tmp_path / "planted"
    planted.symlink_to(ours)
    os.lchown(planted, NOBODY, NOBODY)
    with pytest.raises(SocketPathError, match="symlink owned by uid 65534"):
        prepare_socket_path(planted / "infer.sock")
    mine = tmp_path / "mine"
    mine.symlink_to(ours)
    ensure_private_dir(mine)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    link = tmp_path / "link-to-foreign"
    link.symlink_to(foreign)
    with pytest.raises(SocketPathError, match="owned by uid 65534"):
        ensure_private_dir(link)


async def test_foreign_owned_socket_dir_is_a_boot_error_with_a_record(tmp_path):
    """Item 10: a socket directory owned by another user stops the boot like every other
    boot error: exit 1 and a `boot_failed` record. Old code: the SocketPathError escaped
    the boot (exit 2, a traceback, no record)."""
    d = short_tmpdir()
    try:
        run_dir = d / "run" / "inferd"
        run_dir.mkdir(parents=True, mode=0o700)
        os.chown(run_dir, NOBODY, NOBODY)
        cfg = write_mock_config(d / "config.json", tokens=["x"])
        proc = spawn_serve(serve_env(d), "--config", str(cfg), "--no-v2", "--no-embed")
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 60)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert rc == 1, stderr
        assert "Traceback" not in stderr, stderr
        failed = [r for r in records(d / "logs") if r["msg"] == "boot_failed"]
        assert len(failed) == 1 and "owned by uid 65534" in failed[0]["reason"], records(d / "logs")
    finally:
        cleanup(d)
