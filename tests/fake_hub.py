"""A local imitation of the Hugging Face Hub's resolve endpoint, for download tests.

It speaks what huggingface-hub relies on: `/{repo}/resolve/{revision}/{file}` with
HEAD, ETag / X-Repo-Commit / X-Linked-Size / X-Linked-Etag headers, an optional 302 to
a "CDN" path (as the Hub does for LFS/Xet files), and Range requests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

MiB = 1 << 20
REPO = "acme/tiny-GGUF"
FILE = "tiny-q4.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    sent: int = 0


@dataclass
class FakeHub:
    files: dict[str, Path] = field(default_factory=dict)  # resolve path -> file on disk
    redirect: bool = False
    ignore_range: bool = False
    drop_after: int | None = None  # one-shot: cut the next GET body at this absolute offset
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _shas: dict = field(default_factory=dict)

    def add(self, path: Path, repo: str = REPO, filename: str = FILE, revision: str = "main") -> str:
        key = f"/{repo}/resolve/{revision}/{filename}"
        self.files[key] = path
        return key

    def sha_of(self, path: Path) -> str:
        key = (path, path.stat().st_mtime_ns)
        if key not in self._shas:
            self._shas[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._shas[key]

    def gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET"]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:
            pass

        def _lookup(self) -> tuple[Path, str] | None:
            if self.path.startswith("/cdn/"):
                sha = self.path[len("/cdn/"):]
                for p in hub.files.values():
                    if hub.sha_of(p) == sha:
                        return p, sha
                return None
            path = hub.files.get(self.path)
            return (path, hub.sha_of(path)) if path else None

        def _common(self, size: int, sha: str) -> None:
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")

        def _api(self) -> None:
            """`/api/models/{repo}[/revision/{rev}]`: the file list with each file's size and
            LFS sha256, as `HfApi.model_info(files_metadata=True)` reads it (`inferd pull hf.co/...`)."""
            path = self.path.split("?", 1)[0][len("/api/models/"):]
            repo = path.split("/revision/", 1)[0]
            siblings = []
            for key, file in hub.files.items():
                m = re.fullmatch(rf"/{re.escape(repo)}/resolve/[^/]+/(.+)", key)
                if m:
                    size = file.stat().st_size
                    siblings.append({"rfilename": m.group(1), "size": size,
                                     "lfs": {"sha256": hub.sha_of(file), "size": size, "pointerSize": 134}})
            if not siblings:
                body = b'{"error":"Repository not found"}'
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
            else:
                body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                   "siblings": siblings}).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, body: bool) -> Seen:
            seen = Seen(self.command, self.path, self.headers.get("Range"))
            hub.seen.append(seen)
            if self.path.startswith("/api/models/"):
                self._api()
                return seen
            found = self._lookup()
            if found is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return seen
            path, sha = found
            size = path.stat().st_size
            if hub.redirect and not self.path.startswith("/cdn/"):
                self.send_response(302)
                self._common(size, sha)
                self.send_header("X-Linked-Size", str(size))
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("Location", f"/cdn/{sha}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return seen
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", seen.range or "")
            if m and not hub.ignore_range:
                start = int(m.group(1))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return seen
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self._common(size, sha)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            if not body:
                return seen
            stop = size
            if hub.drop_after is not None and hub.drop_after > start:
                stop, hub.drop_after = hub.drop_after, None
                self.close_connection = True
            with path.open("rb") as f:
                f.seek(start)
                pos = start
                while pos < stop:
                    chunk = f.read(min(MiB, stop - pos))
                    self.wfile.write(chunk)
                    pos += len(chunk)
                    seen.sent += len(chunk)
            self.wfile.flush()
            return seen

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

    return Handler


@contextmanager
def serving_hub() -> Iterator[FakeHub]:
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
