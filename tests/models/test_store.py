"""The model store without the network: names, specs, import, the fast path, refusals.

Downloads (a local imitation of the Hugging Face resolve endpoint) are in test_fetch.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import inferd
from inferd.models import store as store_mod
from inferd.models.store import (
    ModelSpec,
    ModelStore,
    ShaMismatch,
    StoreError,
    default_store_root,
    sha256_file,
    validate_model_name,
)
from inferd.proto.admin import CheckingLocal, Quarantine, Verify

DEAD_ENDPOINT = "http://127.0.0.1:9"  # discard port: any network use fails loudly


def _payload(n: int = 300_000, seed: bytes = b"inferd") -> bytes:
    out = bytearray()
    block = seed
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", endpoint=DEAD_ENDPOINT, retries=0)


@pytest.fixture
def model_file(tmp_path: Path) -> tuple[Path, bytes, str]:
    data = _payload()
    path = tmp_path / "src" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


# ---- names and specs -----------------------------------------------------------------

@pytest.mark.parametrize(
    "name",
    ["gemma-3-270m", "a", "A.b_c-1", "x" * 128, "model.v1.gguf", "CONSOLE", "com10", "lpt0", "con1", "nul_model"],
)
def test_valid_names(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "1-128"),
        ("x" * 129, "1-128"),
        (".hidden", "start with '.'"),
        ("a..b", "'..'"),
        ("..", "start with '.'"),
        ("a/b", "1-128"),
        ("a\\b", "1-128"),
        ("a b", "1-128"),
        ("a:b", "1-128"),
        ("héllo", "1-128"),
        ("CON", "reserved"),
        ("con.gguf", "reserved"),
        ("Com1", "reserved"),
        ("lpt9.bin", "reserved"),
        ("nul", "reserved"),
        ("aux.tar.gz", "reserved"),
        ("PRN", "reserved"),
    ],
)
def test_invalid_names(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        validate_model_name(name)


def test_spec_normalises_sha_and_rejects_bad_fields() -> None:
    sha = "AB" * 32
    spec = ModelSpec(name="m", sha256=sha, repo="org/repo", filename="m.gguf")
    assert spec.sha256 == "ab" * 32
    assert spec.revision == "main"
    for bad in (
        {"name": "m", "sha256": "ab" * 31},
        {"name": "m", "sha256": "zz" * 32},
        {"name": "../m", "sha256": sha},
        {"name": "m", "sha256": sha, "repo": "org/repo"},
        {"name": "m", "sha256": sha, "filename": "m.gguf"},
        {"name": "m", "sha256": sha, "source_url": "https://x"},
        {"name": "m", "sha256": sha, "size_bytes": -1},
    ):
        with pytest.raises(ValidationError):
            ModelSpec(**bad)


def test_default_store_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODELS_HOME", str(tmp_path / "from-env"))
    assert default_store_root("~/explicit") == tmp_path / "explicit"
    assert default_store_root() == tmp_path / "from-env"
    monkeypatch.delenv("MODELS_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    root = default_store_root()
    assert root.name == "models" and "inferd" in root.parts


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = _payload(3 * (1 << 20) + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


# ---- import --------------------------------------------------------------------------

def test_import_file_copies_hashes_and_writes_manifest(store: ModelStore, model_file) -> None:
    src, data, sha = model_file
    before = os.stat(src)
    blob = store.import_file("tiny", src, expect_sha256=sha.upper())
    assert blob == store.root / "blobs" / "sha256" / sha[:2] / sha / "data"
    assert blob.read_bytes() == data
    assert src.read_bytes() == data and os.stat(src).st_mtime_ns == before.st_mtime_ns
    manifest = json.loads(store.manifest_path("tiny").read_text())
    assert manifest == store.read_manifest("tiny")
    assert manifest["schema_version"] == 1
    assert manifest["name"] == "tiny"
    assert manifest["format"] == "gguf"
    assert manifest["blob"] == f"sha256:{sha}"
    assert manifest["size_bytes"] == len(data)
    assert manifest["license"] is None
    assert manifest["source"] == {"registry": "local-import", "repo": None, "revision": None, "filename": "tiny.gguf"}
    assert manifest["produced_by"] == f"inferd/{inferd.__version__}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["produced_at"])
    leftovers = [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_import_mismatch_imports_nothing(store: ModelStore, model_file) -> None:
    src, data, sha = model_file
    wrong = "0" * 64
    with pytest.raises(ShaMismatch) as info:
        store.import_file("tiny", src, expect_sha256=wrong)
    msg = str(info.value)
    assert "SHA-256 mismatch" in msg and "(nothing imported)" in msg
    assert wrong in msg and sha in msg
    assert store.read_manifest("tiny") is None
    assert not store.blob_path(sha).exists()
    assert [p for p in (store.root / "blobs").rglob("*") if p.is_file()] == []
    assert src.read_bytes() == data


# ---- ensure without a download -------------------------------------------------------

def test_ensure_fast_path_does_not_rehash(store: ModelStore, model_file, monkeypatch) -> None:
    src, _, sha = model_file
    blob = store.import_file("tiny", src)
    monkeypatch.setattr(store_mod, "sha256_file", lambda _p: pytest.fail("fast path re-hashed the blob"))
    phases: list = []
    assert store.ensure(ModelSpec(name="tiny", sha256=sha), phases.append, auto_pull=False) == blob
    assert phases == [CheckingLocal(path=str(blob))]


def test_ensure_rehashes_blob_without_manifest(store: ModelStore, model_file) -> None:
    src, _, sha = model_file
    blob = store.import_file("other-name", src)
    phases: list = []
    spec = ModelSpec(name="tiny", sha256=sha, license="gemma")
    assert store.ensure(spec, phases.append, auto_pull=False) == blob
    assert phases == [CheckingLocal(path=str(blob)), Verify(path=str(blob))]
    manifest = store.read_manifest("tiny")
    assert manifest["blob"] == f"sha256:{sha}" and manifest["license"] == "gemma"


def test_ensure_quarantines_corrupt_blob(store: ModelStore, model_file) -> None:
    src, data, sha = model_file
    blob = store.import_file("tiny", src)
    store.manifest_path("tiny").unlink()
    blob.write_bytes(b"bit rot" + data[7:])
    phases: list = []
    with pytest.raises(StoreError, match="no source and is not in the store"):
        store.ensure(ModelSpec(name="tiny", sha256=sha), phases.append)
    quarantine = [p for p in phases if isinstance(p, Quarantine)]
    assert len(quarantine) == 1 and quarantine[0].expected_sha256 == sha
    assert quarantine[0].actual_sha256 == hashlib.sha256(b"bit rot" + data[7:]).hexdigest()
    moved = Path(quarantine[0].quarantine_path)
    assert moved.parent == store.quarantine_dir and re.fullmatch(r"\d{8}T\d{6}Z-sha-mismatch\.bin", moved.name)
    assert not blob.exists()


def test_ensure_missing_without_auto_pull(store: ModelStore) -> None:
    spec = ModelSpec(name="tiny", sha256="ab" * 32, repo="org/repo", filename="m.gguf")
    phases: list = []
    with pytest.raises(StoreError) as info:
        store.ensure(spec, phases.append, auto_pull=False)
    assert "inferd pull" in str(info.value) and "auto_pull" in str(info.value)
    assert phases == [CheckingLocal(path=str(store.blob_path("ab" * 32)))]


def test_ensure_missing_without_source(store: ModelStore) -> None:
    with pytest.raises(StoreError) as info:
        store.ensure(ModelSpec(name="tiny", sha256="ab" * 32), None)
    assert str(info.value) == (
        "model tiny has no source and is not in the store; run `inferd import --name tiny FILE`"
    )


# ---- refusals (THREAT_MODEL F-2) and the per-name lock ---------------------------------

def test_symlink_at_blob_path_is_refused(store: ModelStore, model_file, tmp_path: Path) -> None:
    src, _, sha = model_file
    store.import_file("tiny", src)
    blob = store.blob_path(sha)
    planted = tmp_path / "planted.gguf"
    os.replace(blob, planted)
    blob.symlink_to(planted)
    with pytest.raises(StoreError, match="symlink"):
        store.ensure(ModelSpec(name="tiny", sha256=sha), None)


def test_symlink_at_staging_path_is_refused(store: ModelStore, tmp_path: Path) -> None:
    sha = "cd" * 32
    partial = store.partial_path(sha)
    partial.parent.mkdir(parents=True)
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    partial.symlink_to(target)
    spec = ModelSpec(name="tiny", sha256=sha, repo="org/repo", filename="m.gguf")
    with pytest.raises(StoreError, match="symlink"):
        store.ensure(spec, None)
    assert target.read_bytes() == b"keep me"


def test_symlink_lock_file_is_refused(store: ModelStore, tmp_path: Path, model_file) -> None:
    src, _, _ = model_file
    lock = store.lock_path("tiny")
    lock.parent.mkdir(parents=True)
    lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="symlink"):
        store.import_file("tiny", src)
    assert not (tmp_path / "elsewhere").exists()


def test_lock_held_by_another_process(store: ModelStore, model_file) -> None:
    src, _, sha = model_file
    store.import_file("tiny", src)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys\n"
            "f = open(sys.argv[1], 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(store.lock_path("tiny")),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="model tiny is being fetched by another process"):
            store.ensure(ModelSpec(name="tiny", sha256=sha), None)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    # Released with the process: the same call now succeeds.
    assert store.ensure(ModelSpec(name="tiny", sha256=sha), None) == store.blob_path(sha)
