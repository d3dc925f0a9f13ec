"""Fake daemons for CLI tests: real Unix sockets served from threads.

The CLI commands run their own event loop (asyncio.run), so the servers live on
plain threads rather than in a test's loop.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

Handler = Callable[[BinaryIO, BinaryIO], None]


class FakeServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = str(path)
        self.handler = handler
        self.connections = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(8)
        self._conns: list[socket.socket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        wfile = conn.makefile("wb", buffering=0)
        try:
            self.handler(rfile, wfile)
        except OSError:
            pass
        finally:
            for f in (rfile, wfile):
                try:
                    f.close()
                except OSError:
                    pass
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def stop(self) -> None:
        self._sock.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def sock_dir(sockdir: Path) -> Path:
    """The harness's short socket directory (tests/conftest.py), by this package's name."""
    return sockdir


@pytest.fixture
def fake_server(sock_dir):
    started: list[FakeServer] = []

    def start(handler: Handler, name: str = "s.sock") -> FakeServer:
        server = FakeServer(sock_dir / name, handler)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
