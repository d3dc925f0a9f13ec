"""The daemon fetching its model on first boot, from a local imitation of the Hub.

Serves the real Gemma 3 270M GGUF on 127.0.0.1 (HF_ENDPOINT), so the whole path runs:
store lookup, resumable download with progress, sha256 verify, load, ready. A wrong
pinned sha256 is quarantined and the boot fails naming both digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from daemon_harness import Daemon, roundtrip, start_daemon
from fake_hub import serving_hub

REPO = "google/gemma-3-270m-GGUF"
FILE = "gemma-3-270m-q4_k_m.gguf"
MiB = 1 << 20


@pytest.fixture(scope="module")
def gemma(model_path) -> tuple[Path, str]:
    path = Path(model_path)
    with path.open("rb") as fh:
        return path, hashlib.file_digest(fh, "sha256").hexdigest()


def write_config(d: Path, sha: str) -> Path:
    cfg = d / "config.json"
    cfg.write_text(json.dumps({
        "models_home": str(d / "models"),
        "backends": [{
            "kind": "llamacpp", "name": "gemma", "n_ctx": 512, "n_threads": 2,
            "model": {"name": "gemma-3-270m", "repo": REPO, "filename": FILE, "sha256": sha},
        }],
    }))
    return cfg


async def boot_collecting(d: Path, cfg: Path) -> tuple[Daemon, list[dict]]:
    """Boot from `cfg` and every status event it published, until ready or exit."""
    daemon = await start_daemon(d, wait_ready=False, config=str(cfg))
    # The serve task has not run yet: subscribed now, not one phase is missed.
    sub = daemon.server.broadcaster.subscribe()
    events: list[dict] = []

    async def collect() -> None:
        while (frame := await sub.next()) is not None:
            events.append(json.loads(frame))

    collector = asyncio.create_task(collect())
    try:
        await daemon.wait_ready(120)
    finally:
        collector.cancel()
    return daemon, events


async def test_first_boot_downloads_verifies_and_serves(gemma, sockdir, monkeypatch):
    path, digest = gemma
    with serving_hub() as hub:
        hub.add(path, repo=REPO, filename=FILE)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        daemon, events = await boot_collecting(sockdir, write_config(sockdir, digest))
        try:
            assert daemon.server.is_ready.is_set(), events[-3:]
            phases = [e.get("phase") for e in events if e["status"] == "loading_model"]
            # Order of the load phases (download repeats).
            order = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
            assert order == ["checking_local", "download", "verify", "mmap", "kv_cache"], order
            downloads = [e for e in events if e.get("phase") == "download"]
            size = path.stat().st_size
            assert downloads[0]["downloaded_bytes"] == 0
            assert downloads[-1]["downloaded_bytes"] == size and downloads[-1]["total_bytes"] == size
            assert downloads[0]["source_url"].startswith(hub.url) and FILE in downloads[0]["source_url"]
            steps = [b["downloaded_bytes"] - a["downloaded_bytes"] for a, b in zip(downloads, downloads[1:])]
            assert all(0 <= s <= 32 * MiB + MiB for s in steps), steps  # at least every 32 MiB
            # The model's own `loaded` event (issue 20) may come either side of `ready`.
            assert [e["status"] for e in events if e["status"] != "model"][-2:] == ["capabilities", "ready"]
            blob = sockdir / "models" / "blobs" / "sha256" / digest[:2] / digest / "data"
            assert blob.is_file() and blob.stat().st_size == size
            frames = await roundtrip(str(sockdir / "infer.sock"),
                                     {"id": "d1", "messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 4, "temperature": 0}, timeout=60)
            assert frames[-1]["type"] == "done" and frames[-1]["backend"] == "gemma"  # the config entry (ADR 0016)
        finally:
            assert await daemon.stop(30) == 0


async def test_wrong_sha_is_quarantined_and_boot_fails(gemma, sockdir, monkeypatch, caplog):
    path, digest = gemma
    wrong = "0" * 64
    with serving_hub() as hub:
        hub.add(path, repo=REPO, filename=FILE)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        daemon, events = await boot_collecting(sockdir, write_config(sockdir, wrong))
        assert await asyncio.wait_for(daemon.task, 60) == 1
    quarantine = [e for e in events if e.get("phase") == "quarantine"]
    assert len(quarantine) == 1
    q = quarantine[0]
    assert q["expected_sha256"] == wrong and q["actual_sha256"] == digest
    assert Path(q["quarantine_path"]).is_file()
    assert wrong in caplog.text and digest in caplog.text
    assert not (sockdir / "infer.sock").exists()
    assert not (sockdir / "models" / "manifests" / "gemma-3-270m.json").exists()

