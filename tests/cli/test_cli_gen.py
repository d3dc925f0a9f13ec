"""`inferd run`, `chat` and `embed` against fake daemons on real Unix sockets."""

from __future__ import annotations

import json
import threading
import time

from typer.testing import CliRunner

from inferd.cli.main import app

runner = CliRunner()


def frame(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def done(rid: str, content: str, tokens: int, timings: dict | None = None) -> bytes:
    obj = {
        "type": "done",
        "id": rid,
        "content": content,
        "usage": {"prompt_tokens": 5, "completion_tokens": tokens},
        "stop_reason": "end",
        "backend": "mock",
    }
    if timings:
        obj["timings"] = timings
    return frame(obj)


class ChatDaemon:
    """Replies `reply-N` in two tokens; records every request it reads."""

    def __init__(self, error_on: set[int] | None = None, timings: bool = False) -> None:
        self.requests: list[dict] = []
        self.error_on = error_on or set()
        self.timings = timings
        self.lock = threading.Lock()

    def __call__(self, rfile, wfile) -> None:
        for raw in rfile:
            req = json.loads(raw)
            with self.lock:
                self.requests.append(req)
                n = len(self.requests)
            rid = req.get("id", "")
            if n in self.error_on:
                wfile.write(frame({"type": "error", "id": rid, "code": "queue_full", "message": "queue full"}))
                continue
            wfile.write(frame({"type": "token", "id": rid, "content": "reply-"}))
            wfile.write(frame({"type": "token", "id": rid, "content": str(n)}))
            timings = {"prompt_ms": 1.0, "generate_ms": 50.0, "tokens_per_second": 40.0} if self.timings else None
            wfile.write(done(rid, f"reply-{n}", 2, timings))


# ---- run -------------------------------------------------------------------------


def test_run_streams_reply_and_sends_options(fake_server):
    daemon = ChatDaemon()
    server = fake_server(daemon)
    args = ["run", "hello there", "--addr", server.path, "--system", "be brief", "--max-tokens", "16"]
    args += ["--temperature", "0.2", "--top-p", "0.9", "--top-k", "40", "--seed", "7", "--stop", "END", "--stop", "\n\n"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "reply-1\n"
    req = daemon.requests[0]
    assert req["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    assert (req["max_tokens"], req["temperature"], req["top_p"], req["top_k"], req["seed"]) == (16, 0.2, 0.9, 40, 7)
    assert req["stop"] == ["END", "\n\n"]
    assert req["id"].startswith("run-")


def test_run_sends_only_what_the_user_set(fake_server):
    daemon = ChatDaemon()
    server = fake_server(daemon)
    result = runner.invoke(app, ["run", "hi"], env={"INFERD_ADDR": server.path})
    assert result.exit_code == 0, result.output
    assert set(daemon.requests[0]) == {"id", "messages"}


def test_run_error_frame_exits_1(fake_server):
    server = fake_server(ChatDaemon(error_on={1}))
    result = runner.invoke(app, ["run", "hi", "--addr", server.path])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: queue_full: queue full"
    assert result.stdout == ""


def test_run_waits_for_the_socket_to_appear(sock_dir, fake_server):
    daemon = ChatDaemon()
    path = sock_dir / "late.sock"
    timer = threading.Timer(0.4, lambda: fake_server(daemon, name="late.sock"))
    timer.start()
    try:
        started = time.monotonic()
        result = runner.invoke(app, ["run", "hi", "--addr", str(path), "--wait", "10"])
    finally:
        timer.join()
    assert result.exit_code == 0, result.output
    assert result.stdout == "reply-1\n"
    assert time.monotonic() - started < 5


def test_run_gives_up_after_wait(sock_dir):
    result = runner.invoke(app, ["run", "hi", "--addr", str(sock_dir / "never.sock"), "--wait", "0.2"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: daemon not reachable at ")


def test_run_daemon_hangs_up_exits_2(fake_server):
    server = fake_server(lambda rfile, wfile: rfile.readline())
    result = runner.invoke(app, ["run", "hi", "--addr", server.path])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: daemon closed the connection")


# ---- chat ------------------------------------------------------------------------


def test_chat_keeps_history_and_resets(fake_server):
    daemon = ChatDaemon()
    server = fake_server(daemon)
    result = runner.invoke(
        app, ["chat", "--addr", server.path, "--system", "sys"], input="first\nsecond\n/reset\nthird\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "reply-1\nreply-2\nreply-3\n"
    first, second, third = (r["messages"] for r in daemon.requests)
    assert first == [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"}]
    assert second == first + [
        {"role": "assistant", "content": "reply-1"},
        {"role": "user", "content": "second"},
    ]
    assert third == [{"role": "system", "content": "sys"}, {"role": "user", "content": "third"}]
    # One connection serves every turn; no prompt is printed when stdin is not a TTY.
    assert server.connections == 1
    assert "> " not in result.stdout
    stats = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert stats[0].startswith("[2 tokens, ") and stats[0].endswith(" tok/s]")
    assert "[history cleared]" in result.stderr


def test_chat_uses_daemon_timings_and_exit_command(fake_server):
    daemon = ChatDaemon(timings=True)
    server = fake_server(daemon)
    result = runner.invoke(app, ["chat", "--addr", server.path], input="hi\n/exit\nnot sent\n")
    assert result.exit_code == 0, result.output
    assert "[2 tokens, 40.0 tok/s]" in result.stderr.splitlines()
    assert len(daemon.requests) == 1


def test_chat_error_turn_is_dropped_from_history(fake_server):
    daemon = ChatDaemon(error_on={1})
    server = fake_server(daemon)
    result = runner.invoke(app, ["chat", "--addr", server.path], input="lost\nkept\n")
    assert result.exit_code == 0, result.output
    assert "error: queue_full: queue full" in result.stderr
    assert daemon.requests[1]["messages"] == [{"role": "user", "content": "kept"}]


def test_chat_redials_when_the_daemon_dropped_the_idle_connection(fake_server):
    daemon = ChatDaemon()

    def one_reply_per_connection(rfile, wfile):
        # What a reload looks like from a client: the connection goes away between turns.
        daemon([rfile.readline()], wfile)

    server = fake_server(one_reply_per_connection)
    result = runner.invoke(app, ["chat", "--addr", server.path], input="one\ntwo\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "reply-1\nreply-2\n"
    assert server.connections == 2
    assert daemon.requests[1]["messages"][-1] == {"role": "user", "content": "two"}
    assert len(daemon.requests[1]["messages"]) == 3


# ---- embed -----------------------------------------------------------------------


def embed_daemon(requests: list[dict]):
    def handler(rfile, wfile):
        for raw in rfile:
            req = json.loads(raw)
            requests.append(req)
            dims = req.get("dimensions", 3)
            if req.get("task") == "bogus":
                wfile.write(
                    frame({"type": "error", "id": req["id"], "code": "invalid_request", "message": "task uses an unknown variant"})
                )
                continue
            vectors = [[float(i)] * dims for i in range(len(req["input"]))]
            wfile.write(
                frame(
                    {
                        "type": "embeddings",
                        "id": req["id"],
                        "embeddings": vectors,
                        "dimensions": dims,
                        "model": "mock",
                        "usage": {"input_tokens": 3},
                        "backend": "mock",
                    }
                )
            )

    return handler


def test_embed_prints_one_line_per_input(fake_server):
    requests: list[dict] = []
    server = fake_server(embed_daemon(requests))
    result = runner.invoke(app, ["embed", "alpha", "beta", "--addr", server.path, "--dimensions", "2", "--task", "similarity"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        '{"index":0,"dimensions":2,"embedding":[0.0,0.0]}',
        '{"index":1,"dimensions":2,"embedding":[1.0,1.0]}',
    ]
    assert requests[0]["input"] == ["alpha", "beta"]
    assert (requests[0]["dimensions"], requests[0]["task"]) == (2, "similarity")


def test_embed_error_frame_exits_1(fake_server):
    server = fake_server(embed_daemon([]))
    result = runner.invoke(app, ["embed", "x", "--addr", server.path, "--task", "bogus"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: invalid_request: task uses an unknown variant"
