"""F-6: the model that was hashed is the model that is loaded, even if the path is swapped."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from daemon_harness import assert_same_fds, open_fds, roundtrip, start_daemon

from inferd.daemon.config import ConfigFile, LlamaCppEntry
from inferd.daemon.loader import LoadError, resolve_model_file


def _entry(path, sha):
    return LlamaCppEntry(kind="llamacpp", name="m", model_path=str(path), model_sha256=sha)


async def test_swapping_the_path_after_verify_does_not_change_what_loads(tmp_path):
    good = os.urandom(3 << 20)
    path = tmp_path / "model.gguf"
    path.write_bytes(good)
    entry = _entry(path, hashlib.sha256(good).hexdigest())
    phases = []
    model = await resolve_model_file(entry, ConfigFile(backends=[entry]), phases.append)
    try:
        # An attacker replaces the file between our hash and llama.cpp's open/mmap.
        evil = tmp_path / "evil.gguf"
        evil.write_bytes(b"\x00" * len(good))
        os.replace(evil, path)
        assert path.read_bytes() != good
        assert model.load_path != path
        assert model.load_path.read_bytes() == good  # the verified inode, not the new file
    finally:
        model.close()
    assert [type(p).__name__ for p in phases] == ["CheckingLocal", "Verify"]


async def test_mismatch_refuses_and_names_both_digests(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not the model")
    entry = _entry(path, "ab" * 32)
    fds = open_fds()
    with pytest.raises(LoadError) as exc:
        await resolve_model_file(entry, ConfigFile(backends=[entry]), lambda _: None)
    assert "ab" * 32 in str(exc.value) and hashlib.sha256(b"not the model").hexdigest() in str(exc.value)
    assert_same_fds(fds, "after a refused model")  # the verified descriptor was closed, not leaked


async def test_daemon_serves_a_pinned_model_loaded_through_its_descriptor(sockdir, model_path):
    with open(model_path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    cfg = sockdir / "config.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "llamacpp", "name": "pinned", "model_path": model_path,
                                             "model_sha256": digest, "n_ctx": 512, "n_threads": 2}]}))
    # Imported before the snapshot: llama-cpp-python opens /dev/null twice, once, at import.
    import inferd.engine.llamacpp.backend  # noqa: F401

    fds = open_fds()
    d = await start_daemon(sockdir, config=str(cfg), embed=False)
    try:
        assert d.server.router.entries[0].caps.model == "Gemma 3 270m"
        done = (await roundtrip(d.infer, {"id": "p", "messages": [{"role": "user", "content": "Hi"}],
                                          "max_tokens": 3}, timeout=60))[-1]
        assert done["type"] == "done"
    finally:
        assert await d.stop(60) == 0
    # Sockets, lock, the verified model's descriptor: every one the daemon opened is closed.
    assert_same_fds(fds, "after the daemon stopped")
