"""Resumable download of one Hugging Face file into a caller-owned partial file.

huggingface-hub supplies the parts that must match the Hub: the resolve URL (so
HF_ENDPOINT mirrors work), the HEAD metadata call (size behind LFS/Xet redirects),
auth/user-agent headers, its shared HTTP session (proxies, `set_client_factory`,
offline mode) and its error mapping. The byte loop is ours: `hf_hub_download`
writes into the HF cache layout, deletes its per-process partial file on failure
and reports progress only through a tqdm class, while we need our CAS layout, a
partial that survives restarts (HTTP Range resume) and `download` admin events.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.utils import (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    build_hf_headers,
    hf_raise_for_status,
    http_stream_backoff,
)

from ..proto.admin import Download
from .spec import ModelSpec, StoreError

try:  # huggingface-hub 2.x ships httpx2; 1.x used httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx  # type: ignore[no-redef]

CHUNK = 1 << 20
PROGRESS_EVERY_BYTES = 32 << 20
PROGRESS_EVERY_SECONDS = 5.0
_TRANSIENT = (_httpx.TransportError,)
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}

ProgressSink = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class RemoteFile:
    url: str
    size: int | None
    etag: str | None
    commit: str | None


def resolve(repo: str, filename: str, revision: str, *, endpoint: str | None = None, retry: bool = True) -> RemoteFile:
    """HEAD the resolve URL: the size is what makes progress and resume meaningful."""
    try:
        url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
        meta = get_hf_file_metadata(url, endpoint=endpoint, retry_on_errors=retry)
    except (HfHubHTTPError, OfflineModeIsEnabled, *_TRANSIENT, ValueError) as exc:
        raise StoreError(f"cannot look up {repo}/{filename}@{revision}: {_one_line(exc)}") from None
    return RemoteFile(url=url, size=meta.size, etag=meta.etag, commit=meta.commit_hash)


def fetch_partial(
    spec: ModelSpec, partial: Path, publish: Callable[[Download], None], *, endpoint: str, retries: int
) -> None:
    """Bring `partial` up to the remote file's full length, publishing `download` phases."""
    assert spec.repo is not None and spec.filename is not None
    parts = urlsplit(endpoint)
    # As upstream's InsecureUrl: the Hub token travels in these requests, so plain
    # http is only acceptable to a mirror on this machine.
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise StoreError(f"refusing model source {endpoint}: use https:// (plain http only on loopback)")
    remote = resolve(spec.repo, spec.filename, spec.revision, endpoint=endpoint, retry=retries > 0)
    if remote.size is not None and spec.size_bytes is not None and remote.size != spec.size_bytes:
        raise StoreError(
            f"model {spec.name}: {remote.url} is {remote.size} bytes but the config pins size_bytes "
            f"{spec.size_bytes}; not downloading a file that cannot match"
        )

    def progress(done: int, total: int | None) -> None:
        publish(Download(downloaded_bytes=done, total_bytes=total, source_url=remote.url))

    total = remote.size if remote.size is not None else spec.size_bytes
    try:
        download_resumable(remote.url, partial, total=total, on_progress=progress, retries=retries)
    except OSError as exc:  # ELOOP here means a symlink raced into the staging path (F-2)
        raise StoreError(f"cannot write {partial}: {exc.strerror or exc}") from None


class _Progress:
    """Turns byte counts into a bounded stream of callbacks (32 MiB or 5 s, as upstream)."""

    def __init__(self, sink: ProgressSink, total: int | None) -> None:
        self.sink = sink
        self.total = total
        self.done = 0
        self._last_bytes = 0
        self._last_t = time.monotonic()

    def _emit(self, done: int) -> None:
        self._last_bytes = done
        self._last_t = time.monotonic()
        self.sink(done, self.total)

    def start(self, resumed_at: int) -> None:
        self.done = resumed_at
        self._emit(0)
        if resumed_at:
            self._emit(resumed_at)

    def advance(self, n: int) -> None:
        self.done += n
        if (
            self.done - self._last_bytes >= PROGRESS_EVERY_BYTES
            or time.monotonic() - self._last_t >= PROGRESS_EVERY_SECONDS
        ):
            self._emit(self.done)

    def reset(self) -> None:
        self.done = 0
        self._emit(0)

    def finish(self) -> None:
        if self.total is None:
            self.total = self.done
        self._emit(self.done)


def download_resumable(
    url: str,
    dest: Path,
    *,
    total: int | None,
    on_progress: ProgressSink,
    retries: int = 3,
    backoff_seconds: float = 1.0,
) -> int:
    """Fill `dest` with the bytes at `url`, continuing from whatever `dest` already holds.

    Returns the final size. Transient network failures are retried `retries` times
    (the budget refills whenever bytes arrive); past that the partial file stays for
    the next attempt, which resumes with an HTTP Range request.
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(dest, flags, 0o644)
    with os.fdopen(fd, "r+b") as f:
        offset = f.seek(0, os.SEEK_END)
        if total is not None and offset > total:
            f.truncate(0)  # longer than the file can be: not a prefix of it
            offset = 0
        progress = _Progress(on_progress, total)
        progress.start(offset)
        budget = retries
        while progress.total is None or progress.done < progress.total:
            before = progress.done
            try:
                if _fetch_range(url, f, progress, retries):
                    break
                reason = "the server ended the body early"
            except _TRANSIENT as exc:
                reason = _one_line(exc)
            except (HfHubHTTPError, OfflineModeIsEnabled) as exc:
                raise StoreError(f"download from {url} failed: {_one_line(exc)}") from None
            if progress.done > before:
                budget = retries
            if budget <= 0:
                raise StoreError(
                    f"download from {url} interrupted at {progress.done} bytes ({reason}); "
                    f"the partial file {dest} is kept and the next attempt resumes it"
                )
            budget -= 1
            time.sleep(backoff_seconds)
        f.flush()
        os.fsync(f.fileno())
        progress.finish()
        return progress.done


def _fetch_range(url: str, f: BinaryIO, progress: _Progress, retries: int) -> bool:
    """One GET from the current offset. True when the server says the body is complete."""
    offset = progress.done
    headers = build_hf_headers()
    # A compressed body has no usable byte offsets, and CDNs may ignore Range with gzip.
    headers["Accept-Encoding"] = "identity"
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with http_stream_backoff(
        "GET",
        url,
        headers=headers,
        timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
        # Only status retries here: a transport error raised while we read the body
        # would be swallowed by the backoff generator mid-`with`, so we retry ourselves.
        retry_on_exceptions=(),
        retry_on_status_codes=_RETRY_STATUS,
        max_retries=retries,
    ) as resp:
        if resp.status_code == 416 and offset:
            size = _size_from_content_range(resp.headers.get("Content-Range"))
            if size == offset:
                progress.total = size
                return True
            _restart(f, progress)
            return False
        hf_raise_for_status(resp)
        if offset and resp.status_code != 206:
            _restart(f, progress)  # Range ignored: the body starts at byte 0
            offset = 0
        elif offset and _range_start(resp.headers.get("Content-Range")) != offset:
            _restart(f, progress)
            return False
        if progress.total is None:
            size = _size_from_content_range(resp.headers.get("Content-Range"))
            length = resp.headers.get("Content-Length")
            if size is None and length is not None and resp.headers.get("Content-Encoding", "identity") == "identity":
                size = offset + int(length)
            progress.total = size
        f.seek(offset)
        for chunk in resp.iter_bytes(chunk_size=CHUNK):
            f.write(chunk)
            progress.advance(len(chunk))
        f.flush()
    return progress.total is None or progress.done >= progress.total


def _restart(f: BinaryIO, progress: _Progress) -> None:
    f.seek(0)
    f.truncate(0)
    progress.reset()


def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, rest = (content_range or "").split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def _size_from_content_range(content_range: str | None) -> int | None:
    try:
        size = (content_range or "").rsplit("/", 1)[1]
        return None if size == "*" else int(size)
    except (IndexError, ValueError):
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
