"""Event-loop stall of big request lines: how long one client's 60 MiB frame holds up the others.

    python bench/stall.py [--mib 60] [--no-reference]

Spawns `inferd serve --v2` (mock backend) on Unix sockets in a temp dir. A probe
connection sends 1-token requests back to back and records every round trip; meanwhile
another connection sends one big line of each shape below and waits for its answer.
The stall a shape causes is the probe's worst round trip while that line was being
read and answered, minus the probe's median round trip at rest.

Shapes (each about --mib MiB):
  content        one message whose content is one huge string (served)
  messages       two million one-letter messages (refused before parsing: MAX_JSON_VALUES)
  stops          millions of stop strings (refused before parsing: MAX_JSON_VALUES)
  values-at-cap  65,000 JSON values plus one huge string (parsed, then served)
  v2-attachment  a v2 request with one huge base64 image attachment (served)

The reference, in this process, is what the same line costs the parser alone when it
is not scanned first (the daemon before issue 8: `model_validate_json` on the loop).
The machine is shared and noisy: compare the stall against the reference from the same
run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def shapes(mib: int) -> dict[str, tuple[str, bytes]]:
    size = mib << 20
    msg = {"role": "user", "content": "a"}
    one = len(json.dumps(msg)) + 2
    out: dict[str, tuple[str, bytes]] = {}
    out["content"] = ("v1", json.dumps({"id": "big", "max_tokens": 1,
                                        "messages": [{"role": "user", "content": "x" * size}]}).encode())
    out["messages"] = ("v1", json.dumps({"id": "big", "messages": [msg] * (size // one)}).encode())
    out["stops"] = ("v1", json.dumps({"id": "big", "messages": [msg], "stop": ["ab"] * (size // 6)}).encode())
    filler = [0] * 64_000  # ignored member: parsed, counted, dropped
    out["values-at-cap"] = ("v1", json.dumps({"id": "big", "max_tokens": 1, "x": filler,
                                              "messages": [{"role": "user", "content": "y" * (size - 200_000)}]}).encode())
    raw = b"\x00" * (size * 3 // 4 // 3 * 3)
    out["v2-attachment"] = ("v2", json.dumps({
        "id": "big", "max_tokens": 1,
        "attachments": [{"kind": "image", "id": "img", "width": len(raw) // 3, "height": 1,
                         "bytes": base64.b64encode(raw).decode()}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"},
                                                  {"type": "image", "attachment_id": "img"}]}],
    }).encode())
    return out


def reference_parse_seconds(surface: str, line: bytes) -> float:
    """The parser alone on this line, without the pre-parse scan (the old daemon's stall)."""
    from inferd.proto import v1, v2

    model = v1.Request if surface == "v1" else v2.RequestV2
    started = time.perf_counter()
    try:
        model.model_validate_json(line)
    except Exception:  # noqa: BLE001 - a refusal still cost its time
        pass
    return time.perf_counter() - started


def wait_for_socket(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
    raise TimeoutError(path)


def read_terminal(sock: socket.socket) -> bytes:
    """Read until a done or error frame (or EOF); return the last line."""
    buf = b""
    while True:
        lines = buf.split(b"\n")
        for line in lines[:-1]:
            if b'"type":"done"' in line or b'"type":"error"' in line:
                return line
        buf = lines[-1]
        chunk = sock.recv(1 << 16)
        if not chunk:
            return buf or b"EOF"
        buf += chunk


class Probe(threading.Thread):
    """Back-to-back 1-token requests on its own thread and blocking socket (so nothing the
    bench does on its main thread delays it); every round trip is kept with its end time."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.samples: list[tuple[float, float]] = []  # (ended at, seconds)
        self.stopping = threading.Event()

    def run(self) -> None:
        line = b'{"id":"p","messages":[{"role":"user","content":"x"}],"max_tokens":1}\n'
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.path)
            while not self.stopping.is_set():
                started = time.perf_counter()
                sock.sendall(line)
                read_terminal(sock)
                ended = time.perf_counter()
                self.samples.append((ended, ended - started))

    def worst_between(self, start: float, end: float) -> float:
        # A round trip that overlaps the window at all may have been held up by it.
        return max((rt for t, rt in self.samples if t >= start and t - rt <= end), default=0.0)


def send_big(path: str, line: bytes) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sender = threading.Thread(target=sock.sendall, args=(line + b"\n",), daemon=True)
        sender.start()  # the daemon may answer (and stop reading) before the line is all sent
        answer = read_terminal(sock)
    try:
        verdict = json.loads(answer)
    except ValueError:
        return answer[:20].decode(errors="replace")
    return verdict.get("type", "?") + (f":{verdict.get('code')}" if verdict.get("type") == "error" else "")


def run(args: argparse.Namespace) -> None:
    lines = shapes(args.mib)
    tmp = Path(tempfile.mkdtemp(prefix="ifd-stall-"))
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "mock", "tokens": ["t"]}]}))
    infer, v2 = str(tmp / "infer.sock"), str(tmp / "v2.sock")
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(tmp / "logs"), XDG_RUNTIME_DIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "inferd.cli.main", "serve", "--config", str(cfg),
                             "--uds", infer, "--v2", "--v2-addr", v2, "--no-embed",
                             "--admin-addr", str(tmp / "admin.sock"), "--lock", str(tmp / "inferd.lock")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: list[tuple[str, float, str, float]] = []
    try:
        wait_for_socket(infer)
        wait_for_socket(v2)
        probe = Probe(infer)
        probe.start()
        time.sleep(1.0)
        rest = statistics.median(rt for _, rt in probe.samples)
        for name, (surface, line) in lines.items():
            time.sleep(0.3)
            start = time.perf_counter()
            kind = send_big(infer if surface == "v1" else v2, line)
            end = time.perf_counter()
            time.sleep(0.3)  # let the probe finish the round trip that overlapped
            results.append((name, len(line) / (1 << 20), kind, max(0.0, probe.worst_between(start, end) - rest)))
        probe.stopping.set()
        probe.join(10)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"probe round trip at rest: {rest * 1000:.2f} ms (median of {len(probe.samples)})")
    print(f"{'shape':<15} {'MiB':>5} {'answer':<24} {'stall ms':>9} {'reference ms':>13} {'ratio':>6}")
    for name, mib, kind, stall in results:
        surface, line = lines[name]
        ref = "" if args.no_reference else reference_parse_seconds(surface, line)
        tail = "" if ref == "" else f"{ref * 1000:13.0f} {stall / ref:6.2f}"
        print(f"{name:<15} {mib:5.1f} {kind:<24} {stall * 1000:9.0f} {tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=60)
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) unscanned parse")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
