"""The content-addressed model store (upstream ADR 0011) and the model spec that points into it.

Layout under the store root:

    blobs/sha256/<aa>/<hash>/data            verified model bytes, named by their SHA-256
    blobs/sha256/<aa>/.partial-<hash>/data.tmp   a download in progress (kept to resume)
    manifests/<name>.json                    name -> blob, written last
    locks/<name>.lock                        one fetcher per model name
    locks/quarantine/                        bytes that failed verification

This module must import without huggingface-hub (config imports `ModelSpec`); the
network half lives in `fetch.py` and is imported only when a download is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit


from .. import __version__
from ..oslock import try_lock, unlock
from ..proto.admin import CheckingLocal, Quarantine, Verify
from .spec import ModelSpec, ShaMismatch, StoreError, validate_model_name, validate_sha256

CHUNK = 1 << 20
MANIFEST_SCHEMA_VERSION = 1

PhaseSink = Callable[[Any], None]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digests_equal(expected: str, actual: str) -> bool:
    # THREAT_MODEL F-5: compare digests in constant time so a local attacker who can
    # feed us bytes learns nothing from timing about the pinned hash.
    return hmac.compare_digest(expected.lower().encode(), actual.lower().encode())


def default_store_root(models_home: str | None = None) -> Path:
    if models_home:
        return Path(models_home).expanduser()
    env = os.environ.get("MODELS_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    # appauthor=False keeps Windows at %LOCALAPPDATA%\inferd (never Roaming), as upstream.
    return Path(platformdirs.user_data_dir("inferd", appauthor=False)) / "models"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class ModelStore:
    def __init__(self, root: str | os.PathLike[str], *, endpoint: str | None = None, retries: int = 3) -> None:
        self.root = Path(root)
        # None: HF_ENDPOINT as it is when a download starts, else huggingface.co.
        self.endpoint = endpoint
        self.retries = retries

    # ---- paths ---------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        sha = validate_sha256(sha256)
        return self.root / "blobs" / "sha256" / sha[:2] / sha / "data"

    def partial_path(self, sha256: str) -> Path:
        sha = validate_sha256(sha256)
        return self.root / "blobs" / "sha256" / sha[:2] / f".partial-{sha}" / "data.tmp"

    def manifest_path(self, name: str) -> Path:
        return self.root / "manifests" / f"{validate_model_name(name)}.json"

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{validate_model_name(name)}.lock"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "locks" / "quarantine"

    def _refuse_symlinks(self, path: Path) -> None:
        # THREAT_MODEL F-2: a symlink planted inside the store could redirect our writes
        # (or what we later load) to a file of the attacker's choosing. The root itself
        # may be a symlink (an operator moving the store to another disk).
        root = self.root
        p = path
        while p != root and root in p.parents:
            if p.is_symlink():
                raise StoreError(f"refusing to use {p}: it is a symlink (THREAT_MODEL F-2)")
            p = p.parent

    def _mkdir(self, path: Path) -> None:
        self._refuse_symlinks(path)
        path.mkdir(parents=True, exist_ok=True)

    # ---- manifests -----------------------------------------------------------------

    def read_manifest(self, name: str) -> dict[str, Any] | None:
        """The manifest for `name`, or None when the store has none."""
        path = self.manifest_path(name)
        self._refuse_symlinks(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"manifest {path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise StoreError(f"manifest {path} is not a JSON object")
        return data

    def _write_manifest(self, name: str, sha: str, size: int, license: str | None, source: dict[str, Any]) -> None:
        path = self.manifest_path(name)
        self._mkdir(path.parent)
        self._refuse_symlinks(path)
        doc = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "name": name,
            "format": "gguf",
            "blob": f"sha256:{sha}",
            "size_bytes": size,
            "license": license,
            "source": source,
            "produced_by": f"inferd/{__version__}",
            "produced_at": _utc_now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        # O_EXCL after the unlink: a symlink raced into place makes this fail instead of following it.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _manifest_names(self, name: str, sha: str) -> bool:
        try:
            doc = self.read_manifest(name)
        except StoreError:
            return False  # unreadable manifest: fall back to re-hashing the blob
        return bool(doc) and doc.get("blob") == f"sha256:{sha}"

    # ---- locking -------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        path = self.lock_path(name)
        self._mkdir(path.parent)
        # THREAT_MODEL F-2: never follow a planted symlink or open something that is not a
        # plain file; create without truncating so a holder's file is left alone.
        if path.is_symlink():
            raise StoreError(f"refusing lock file {path}: it is a symlink (THREAT_MODEL F-2)")
        if path.exists() and not path.is_file():
            raise StoreError(f"refusing lock file {path}: not a regular file (THREAT_MODEL F-2)")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"refusing lock file {path}: not a regular file (THREAT_MODEL F-2)")
            if not try_lock(fd):
                raise StoreError(f"model {name} is being fetched by another process (lock {path})")
            try:
                yield
            finally:
                unlock(fd)
        finally:
            os.close(fd)

    # ---- import --------------------------------------------------------------------

    def import_file(self, name: str, src: str | os.PathLike[str], expect_sha256: str | None = None) -> Path:
        """Copy a local file into the store, hashing on the way; the source is only read."""
        validate_model_name(name)
        expected = validate_sha256(expect_sha256) if expect_sha256 is not None else None
        src = Path(src)
        if not src.is_file():
            raise StoreError(f"{src} is not a regular file")
        staging_dir = self.root / "blobs" / "sha256"
        self._mkdir(staging_dir)
        with self._lock(name):
            staging = staging_dir / f".import-{os.getpid()}-{secrets.token_hex(4)}.tmp"
            try:
                h = hashlib.sha256()
                size = 0
                fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
                with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                    while chunk := fin.read(CHUNK):
                        h.update(chunk)
                        fout.write(chunk)
                        size += len(chunk)
                    fout.flush()
                    os.fsync(fout.fileno())
                actual = h.hexdigest()
                if expected is not None and not digests_equal(expected, actual):
                    raise ShaMismatch(
                        f"SHA-256 mismatch for {src}: expected {expected}, got {actual} (nothing imported)"
                    )
                blob = self.blob_path(actual)
                self._mkdir(blob.parent)
                self._refuse_symlinks(blob)
                os.replace(staging, blob)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    staging.unlink()
            source = {"registry": "local-import", "repo": None, "revision": None, "filename": src.name}
            self._write_manifest(name, actual, size, None, source)
            return blob

    # ---- ensure --------------------------------------------------------------------

    def ensure(self, spec: ModelSpec, on_phase: PhaseSink | None = None, auto_pull: bool = True) -> Path:
        """Return the verified blob for `spec`, downloading it if allowed.

        Blocking; meant for a worker thread. `on_phase` receives proto.admin load phases
        from that thread.
        """
        publish: PhaseSink = on_phase or (lambda _phase: None)
        sha = spec.sha256
        blob = self.blob_path(sha)
        publish(CheckingLocal(path=str(blob)))
        with self._lock(spec.name):
            self._refuse_symlinks(blob)
            if blob.is_file() and self._manifest_names(spec.name, sha):
                return blob
            if blob.exists():
                if self._reverify_blob(spec, blob, publish):
                    return blob
            if not spec.repo:
                raise StoreError(
                    f"model {spec.name} has no source and is not in the store; "
                    f"run `inferd import --name {spec.name} FILE`"
                )
            if not auto_pull:
                raise StoreError(
                    f"model {spec.name} is not in the store at {blob}; "
                    "run `inferd pull` or set `auto_pull: true` in the config"
                )
            return self._download(spec, blob, publish)

    def _reverify_blob(self, spec: ModelSpec, blob: Path, publish: PhaseSink) -> bool:
        if not blob.is_file():
            raise StoreError(f"refusing to use {blob}: not a regular file")
        publish(Verify(path=str(blob)))
        actual = sha256_file(blob)
        if digests_equal(spec.sha256, actual):
            self._write_manifest(spec.name, spec.sha256, blob.stat().st_size, spec.license, self._source_of(spec))
            return True
        # Corrupt blob: set it aside and fetch a fresh copy (or fail as if absent).
        self._quarantine(blob, spec.sha256, actual, publish)
        return False

    def _quarantine(self, path: Path, expected: str, actual: str, publish: PhaseSink) -> Path:
        qdir = self.quarantine_dir
        self._mkdir(qdir)
        stamp = _utc_now().strftime("%Y%m%dT%H%M%SZ")
        target = qdir / f"{stamp}-sha-mismatch.bin"
        n = 1
        while target.exists() or target.is_symlink():
            target = qdir / f"{stamp}-{n}-sha-mismatch.bin"
            n += 1
        os.replace(path, target)
        publish(Quarantine(path=str(path), expected_sha256=expected, actual_sha256=actual, quarantine_path=str(target)))
        return target

    def _source_of(self, spec: ModelSpec) -> dict[str, Any]:
        endpoint = self._endpoint()
        return {
            "registry": urlsplit(endpoint).hostname or endpoint,
            "repo": spec.repo,
            "revision": spec.revision,
            "filename": spec.filename,
        }

    def _endpoint(self) -> str:
        return (self.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

    def _download(self, spec: ModelSpec, blob: Path, publish: PhaseSink) -> Path:
        try:
            from . import fetch  # needs huggingface-hub: only when downloading
        except ImportError as exc:
            raise StoreError(
                f"model {spec.name} must be downloaded but huggingface-hub is not usable ({exc}); "
                f"install inferd[llamacpp] or run `inferd import --name {spec.name} FILE`"
            ) from None
        partial = self.partial_path(spec.sha256)
        self._mkdir(partial.parent)
        self._refuse_symlinks(partial)
        if partial.exists() and not partial.is_file():
            raise StoreError(f"refusing to use {partial}: not a regular file")
        fetch.fetch_partial(spec, partial, publish, endpoint=self._endpoint(), retries=self.retries)
        publish(Verify(path=str(partial)))
        actual = sha256_file(partial)
        if not digests_equal(spec.sha256, actual):
            target = self._quarantine(partial, spec.sha256, actual, publish)
            shutil.rmtree(partial.parent, ignore_errors=True)
            raise ShaMismatch(
                f"SHA-256 mismatch for model {spec.name}: expected {spec.sha256}, got {actual}; "
                f"the downloaded bytes were moved to {target}"
            )
        self._mkdir(blob.parent)
        self._refuse_symlinks(blob)
        os.replace(partial, blob)
        shutil.rmtree(partial.parent, ignore_errors=True)
        self._write_manifest(spec.name, spec.sha256, blob.stat().st_size, spec.license, self._source_of(spec))
        return blob
