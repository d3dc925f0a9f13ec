"""The NDJSON activity log on stdlib logging: record shape, redaction (F-3), rotation (F-4), levels,
failures, and one log call reaching both the file and stderr."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from daemon_harness import line, req, reserved_port, tcp_exchange

from inferd.daemon.observe.activity import (
    LOG_FILE_NAME,
    MAX_LOGGED_VALUE_BYTES,
    ActivityLog,
    NullActivityLog,
    activity_record,
    default_log_dir,
    parse_level,
    redact,
)

GHP = "ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8"  # 36 characters after the prefix
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
KEY = "plainkey-ABCdef-0123456789"  # matches none of the redactor's patterns


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


def record(log: ActivityLog | NullActivityLog, level: str, component: str, msg: str, **fields: Any) -> None:
    """One log call, the way the daemon's call sites make them."""
    log.logger.log(_LEVELS[level.lower()], msg, extra=activity_record(component, **fields))


def read_records(directory: Path, name: str = LOG_FILE_NAME) -> list[dict]:
    text = (directory / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(autouse=True)
def _default_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERD_LOG", raising=False)


# --------------------------------------------------------------------------- #
# Record shape
# --------------------------------------------------------------------------- #


def test_record_shape(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path)
    before = datetime.now(timezone.utc)
    record(
        log,
        "INFO",
        "activity",
        "v2_request_done",
        req_id="log-r1",
        backend="mock",
        output_tokens=2,
        stop_reason="end_turn",
    )
    log.close()
    (rec,) = read_records(tmp_path)
    assert list(rec)[:4] == ["t", "level", "component", "msg"]
    assert rec["level"] == "info"
    assert rec["component"] == "activity"
    assert rec["msg"] == "v2_request_done"
    assert rec["req_id"] == "log-r1"
    assert rec["backend"] == "mock"
    assert rec["output_tokens"] == 2
    assert rec["stop_reason"] == "end_turn"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["t"]), rec["t"]
    stamp = datetime.strptime(rec["t"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((stamp - before).total_seconds()) < 60


def test_one_line_per_record_and_file_mode(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path)
    record(log, "info", "lifecycle", "first", note="line\nbreak")
    record(log, "warn", "lifecycle", "second")
    log.close()
    raw = (tmp_path / LOG_FILE_NAME).read_text()
    assert raw.count("\n") == 2
    assert [r["msg"] for r in read_records(tmp_path)] == ["first", "second"]
    assert read_records(tmp_path)[1]["level"] == "warn"
    assert (os.stat(tmp_path / LOG_FILE_NAME).st_mode & 0o777) == 0o600


def test_unserialisable_fields_become_strings(tmp_path: Path) -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    cyclic: dict = {}
    cyclic["self"] = cyclic
    log = ActivityLog(tmp_path)
    record(log, "info", "activity", "odd", obj=Thing(), path=Path("/x/y"), ratio=float("inf"))
    record(log, "info", "activity", "odder", nested={(1, 2): Thing()}, cyclic=cyclic)
    log.close()
    first, second = read_records(tmp_path)
    assert first["obj"] == "thing!"
    assert first["path"] == "/x/y"
    assert first["ratio"] == "inf"
    assert second["nested"] == {"(1, 2)": "thing!"}
    assert second["msg"] == "odder"


def test_envelope_keys_win_over_fields(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path)
    record(log, "info", "activity", "m", t="not a time")
    log.close()
    (rec,) = read_records(tmp_path)
    assert rec["t"] != "not a time"
    assert rec["field_t"] == "not a time"


# --------------------------------------------------------------------------- #
# Redaction (F-3)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-1234567890abcdefghij here", "key [REDACTED:api-key] here"),
        ("id=AKIAABCDEFGHIJKLMNOP", "id=[REDACTED:aws-access]"),
        ("ASIAABCDEFGHIJKLMNOP", "[REDACTED:aws-session]"),
        (f"push with {GHP}", "push with [REDACTED:api-key]"),
        ("gho_" + "x" * 20, "[REDACTED:api-key]"),
        ("xoxb-1234567890-abcd", "[REDACTED:api-key]"),
        ("pat-na1-0123456789abcdef", "[REDACTED:api-key]"),
        ("thingspat_0123456789abcdef", "[REDACTED:api-key]"),
        (f"session {JWT}", "session [REDACTED:jwt]"),
        ("Authorization: Bearer abcdefgh12345", "[REDACTED:auth-header]"),
        ("authorization=basic dXNlcjpwYXNz", "[REDACTED:auth-header]"),
        ("password=hunter22", "[REDACTED:secret-kv]"),
        ("login with PASSWD: hunter22 now", "login with [REDACTED:secret-kv] now"),
        ("api_key=abcd&user=bob", "[REDACTED:secret-kv]&user=bob"),
        ("api-key: abcd", "[REDACTED:secret-kv]"),
        ('token="abcd1234"', '[REDACTED:secret-kv]"'),
    ],
)
def test_redaction_rules(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "loaded task-specific-model-q4_k_m.gguf from disk-cache-0123456789",
        "sk-short",  # below the 16-character minimum
        "AKIA1234",  # not 16 after the prefix
        "password=abc",  # value below 4 characters
        "input_tokens=12 output_tokens=34 stop_reason=end",
        "Authorization: Bearer short",
    ],
)
def test_redaction_leaves_innocent_text_alone(text: str) -> None:
    assert redact(text) == text


def test_secrets_never_reach_disk(tmp_path: Path) -> None:
    secrets = [
        "sk-1234567890abcdefghij",
        "AKIAABCDEFGHIJKLMNOP",
        GHP,
        JWT,
        "abcdefgh12345",
        "hunter22",
    ]
    log = ActivityLog(tmp_path)
    record(log, "info", "activity", "v2_request_done", req_id="sk-1234567890abcdefghij")
    record(log, "info", "activity", "aws", key="AKIAABCDEFGHIJKLMNOP", gh=GHP)
    record(log, "warn", "activity", f"rejected {JWT}")
    record(log, "info", "activity", "hdr", header="Authorization: Bearer abcdefgh12345")
    record(log, "info", "activity", "kv", password="hunter22", note="login\npassword=hunter22")
    record(log, "info", "activity", "plain", sentence="nothing to see here")
    # After a JSON escape (\n, \t, \u001b) a key still starts at a boundary.
    record(log, "error", "activity", "multi", text="first\nsk-1234567890abcdefghij\tAKIAABCDEFGHIJKLMNOP")
    record(log, "error", "activity", "esc", text="\x1bsk-1234567890abcdefghij")
    log.close()
    raw = (tmp_path / LOG_FILE_NAME).read_text()
    for secret in secrets:
        assert secret not in raw
    for marker in ("api-key", "aws-access", "jwt", "auth-header", "secret-kv"):
        assert f"[REDACTED:{marker}]" in raw
    records = read_records(tmp_path)  # every line is still valid JSON
    assert records[0]["req_id"] == "[REDACTED:api-key]"
    assert records[4]["password"] == "[REDACTED:secret-kv]"
    assert records[5]["sentence"] == "nothing to see here"


def test_redaction_that_straddles_an_escape_still_yields_json(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path)
    # On the serialised line "\x1a" becomes \u001a and "\t" becomes \t, so the
    # line-level rules see "api_key=..." and "token=..." that are not in the text.
    record(
        log,
        "info",
        "activity",
        "edge",
        a="\x1apassword=hunter22",
        b="\x1api_key=abcdef",
        c="\token=abcdefg",
        d="sk-1234567890abcdefghij",
    )
    log.close()
    (rec,) = read_records(tmp_path)  # fails if the line is not valid JSON
    assert rec["a"] == "\x1a[REDACTED:secret-kv]"
    assert rec["b"] == "\x1api_key=abcdef"
    assert rec["c"] == "\token=abcdefg"
    assert rec["d"] == "[REDACTED:api-key]"


# --------------------------------------------------------------------------- #
# Rotation (F-4)
# --------------------------------------------------------------------------- #


def test_rotation_cascade_keeps_live_plus_three(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path, max_bytes=50)
    for i in range(8):
        record(log, "info", "activity", f"m{i}")  # each record alone exceeds 50 bytes
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [LOG_FILE_NAME, f"{LOG_FILE_NAME}.1", f"{LOG_FILE_NAME}.2", f"{LOG_FILE_NAME}.3"]
    # Newest in the live file, then .1, .2, .3; m0..m3 have been dropped.
    assert [r["msg"] for r in read_records(tmp_path)] == ["m7"]
    assert [r["msg"] for r in read_records(tmp_path, f"{LOG_FILE_NAME}.1")] == ["m6"]
    assert [r["msg"] for r in read_records(tmp_path, f"{LOG_FILE_NAME}.2")] == ["m5"]
    assert [r["msg"] for r in read_records(tmp_path, f"{LOG_FILE_NAME}.3")] == ["m4"]


def test_rotation_only_when_the_cap_would_be_exceeded(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path, max_bytes=400)
    for i in range(6):
        record(log, "info", "activity", f"m{i}")
    log.close()
    live = (tmp_path / LOG_FILE_NAME).stat().st_size
    old = (tmp_path / f"{LOG_FILE_NAME}.1").stat().st_size
    assert live <= 400 and old <= 400
    assert not (tmp_path / f"{LOG_FILE_NAME}.2").exists()
    msgs = [r["msg"] for r in read_records(tmp_path, f"{LOG_FILE_NAME}.1")]
    msgs += [r["msg"] for r in read_records(tmp_path)]
    assert msgs == [f"m{i}" for i in range(6)]


def test_rotation_counts_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE_NAME).write_text('{"msg":"from a previous run"}\n' * 3)
    log = ActivityLog(tmp_path, max_bytes=100)
    record(log, "info", "activity", "fresh")
    log.close()
    assert [r["msg"] for r in read_records(tmp_path)] == ["fresh"]
    assert (tmp_path / f"{LOG_FILE_NAME}.1").read_text().count("previous run") == 3


def test_concurrent_writers_do_not_interleave(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path, max_bytes=4096)

    def work(n: int) -> None:
        for i in range(100):
            record(log, "info", "worker", "tick", worker=n, i=i, pad="x" * 40)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 4
    for f in files:
        for line in f.read_text().splitlines():
            assert json.loads(line)["msg"] == "tick"
        assert f.stat().st_size <= 4096


# --------------------------------------------------------------------------- #
# Levels
# --------------------------------------------------------------------------- #


def test_default_level_is_info(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path)
    record(log, "debug", "activity", "prompt text would go here")
    record(log, "info", "activity", "kept")
    log.close()
    assert [r["msg"] for r in read_records(tmp_path)] == ["kept"]


@pytest.mark.parametrize(
    ("env", "kept"),
    [
        ("debug", ["d", "i", "w", "e"]),
        ("info", ["i", "w", "e"]),
        ("warn", ["w", "e"]),
        ("WARNING", ["w", "e"]),
        ("error", ["e"]),
        ("inferd=debug,warn", ["d", "i", "w", "e"]),
        ("nonsense", ["i", "w", "e"]),
    ],
)
def test_level_threshold_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, kept: list[str]
) -> None:
    monkeypatch.setenv("INFERD_LOG", env)
    log = ActivityLog(tmp_path)
    for level in ("debug", "info", "warn", "error"):
        record(log, level, "activity", level[0])
    log.close()
    assert [r["msg"] for r in read_records(tmp_path)] == kept


@pytest.mark.parametrize("env", ["off", "0"])
def test_level_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("INFERD_LOG", env)
    log = ActivityLog(tmp_path / "logs")
    record(log, "error", "activity", "boom")
    log.close()
    assert not (tmp_path / "logs" / LOG_FILE_NAME).exists()
    assert not log.logger.isEnabledFor(logging.ERROR)


def test_explicit_level_overrides_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_LOG", "error")
    log = ActivityLog(tmp_path, level="debug")
    record(log, "debug", "activity", "d")
    log.close()
    assert [r["msg"] for r in read_records(tmp_path)] == ["d"]
    assert parse_level(None) == parse_level("info")


# --------------------------------------------------------------------------- #
# Where the log lives
# --------------------------------------------------------------------------- #


def test_inferd_log_dir_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "custom" / "logs"
    monkeypatch.setenv("INFERD_LOG_DIR", str(target))
    assert default_log_dir() == target
    log = ActivityLog(default_log_dir())
    record(log, "info", "lifecycle", "inferd-daemon starting")
    log.close()
    assert read_records(target)[0]["msg"] == "inferd-daemon starting"
    assert (os.stat(target).st_mode & 0o777) == 0o700


def test_empty_inferd_log_dir_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_LOG_DIR", "")
    assert default_log_dir() == Path(platformdirs.user_log_dir("inferd", appauthor=False))
    monkeypatch.delenv("INFERD_LOG_DIR")
    assert default_log_dir().name in ("log", "Logs", "inferd")


# --------------------------------------------------------------------------- #
# Failures never propagate
# --------------------------------------------------------------------------- #


def test_directory_removed_while_open(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    log = ActivityLog(directory)
    record(log, "info", "activity", "before")
    shutil.rmtree(directory)
    directory.write_text("a file where the directory was")  # makes every reopen fail
    record(log, "info", "activity", "lost")  # must not raise
    directory.unlink()
    record(log, "info", "activity", "after")  # recovers once the path is usable again
    log.close()
    assert [r["msg"] for r in read_records(directory)] == ["after"]


def test_unwritable_log_path_does_not_raise(tmp_path: Path) -> None:
    # Root ignores permission bits, so block the write with a directory squatting
    # on the log file's name instead of a read-only mode.
    (tmp_path / LOG_FILE_NAME).mkdir()
    log = ActivityLog(tmp_path, max_bytes=10)
    record(log, "info", "activity", "dropped")
    record(log, "info", "activity", "dropped again")
    log.close()
    assert (tmp_path / LOG_FILE_NAME).is_dir()


def test_symlink_at_log_path_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / LOG_FILE_NAME).symlink_to(victim)
    log = ActivityLog(logs)
    record(log, "info", "activity", "should not land in victim")
    log.close()
    assert victim.read_text() == "keep\n"


def test_record_after_close_is_ignored(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path)
    record(log, "info", "activity", "one")
    log.close()
    record(log, "info", "activity", "two")
    assert [r["msg"] for r in read_records(tmp_path)] == ["one"]


def test_null_log_writes_no_file_but_reaches_stdlib_logging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INFERD_LOG_DIR", str(tmp_path))
    caplog.set_level(logging.WARNING)
    log = NullActivityLog()
    record(log, "error", "activity", "for stderr only", x=1)
    log.close()
    assert [r.getMessage() for r in caplog.records] == ["for stderr only"]
    assert list(tmp_path.iterdir()) == []


def test_one_log_call_reaches_the_file_and_stderr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 17: a call site logs once; the file gets the event, stderr the sentence."""
    caplog.set_level(logging.INFO)
    log = ActivityLog(tmp_path, level="info")
    log.logger.warning("refusing a %s connection (%s)", "v2", "auth_refused",
                       extra=activity_record("activity", "auth_refused", surface="v2"))
    log.close()
    (rec,) = read_records(tmp_path)
    assert (rec["level"], rec["component"], rec["msg"], rec["surface"]) == ("warn", "activity", "auth_refused", "v2")
    assert [r.getMessage() for r in caplog.records] == ["refusing a v2 connection (auth_refused)"]


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_traffic_records_go_to_the_file_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A record per request or connection would bury stderr (journald); without a file
    (NullActivityLog) it goes nowhere, not even through stdlib's last-resort handler.
    (A handler of our own on the root logger: pytest's capture handlers also sit on
    every non-propagating logger.)"""
    root = _Kept()
    logging.getLogger().addHandler(root)
    try:
        log = ActivityLog(tmp_path, level="info")
        log.traffic.info("request_done", extra=activity_record("inference", req_id="r1"))
        log.logger.warning("peer_refused", extra=activity_record("activity"))
        log.close()
        NullActivityLog().traffic.warning("auth_refused", extra=activity_record("activity", surface="http"))
    finally:
        logging.getLogger().removeHandler(root)
    assert [r["msg"] for r in read_records(tmp_path)] == ["request_done", "peer_refused"]
    assert root.messages == ["peer_refused"]
    assert capsys.readouterr().err == ""


def run_child(code: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run `code` in a fresh interpreter and return the JSON it prints. Bounded, so a
    quadratic redactor fails this in `timeout` seconds rather than after minutes."""
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish within {timeout:g}s (redaction is not linear)")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_adversarial_values_are_logged_in_linear_time_and_truncated():
    """Item 1. A 1 MiB id like "eyJ-" * 262144 made the JWT rule backtrack quadratically
    (~160 s with the event loop blocked); a 40 MiB id of plain letters cost 8 s and wrote
    a 40 MiB record. Now each value is cut to 1 KiB before redaction (the cut word goes,
    with a `…[+N bytes]` marker) and every rule is linear, also on 1 MiB unclipped text
    (what the stderr filter redacts). Old code: the child times out."""
    out = run_child("""
        import json, sys, tempfile, time, pathlib
        from inferd.daemon.observe.activity import ActivityLog, activity_record, redact, LOG_FILE_NAME
        d = pathlib.Path(tempfile.mkdtemp())
        log = ActivityLog(d, level="info")
        values = {"jwt_shape": "eyJ-" * 262144, "letters": "a" * (40 << 20), "words": "word " * 100000}
        took = {}
        for name, value in values.items():
            t0 = time.perf_counter()
            log.logger.info("request_done", extra=activity_record("inference", req_id=value))
            took[name] = time.perf_counter() - t0
        for name, text in {"redact_jwt_shape": "eyJ-" * 262144, "redact_kv": "token=" * 174763,
                           "redact_keys": "ask-" * 262144, "redact_auth": "authorization: " * 69906}.items():
            t0 = time.perf_counter()
            redact(text)
            took[name] = time.perf_counter() - t0
        log.close()
        lines = (d / LOG_FILE_NAME).read_text().splitlines()
        print(json.dumps({"took": took, "sizes": [len(x) for x in lines],
                          "ids": [json.loads(x)["req_id"] for x in lines]}))
    """)
    # A generous bound: the linear redactor needs milliseconds, the old one minutes.
    assert all(seconds < 2.0 for seconds in out["took"].values()), out["took"]
    assert all(size < 2 * MAX_LOGGED_VALUE_BYTES for size in out["sizes"]), out["sizes"]
    jwt_id, letters_id, words_id = out["ids"]
    # One unbroken word: nothing of it can be shown without showing part of it.
    assert jwt_id == f"…[+{4 * 262144} bytes]"
    assert letters_id == f"…[+{40 << 20} bytes]"
    assert words_id == "word " * 204 + "word" + f"…[+{500000 - 1024} bytes]"


def test_a_secret_cut_by_truncation_leaves_no_prefix_behind(tmp_path):
    """Item 1: a key straddling the 1 KiB cut would no longer match its rule; the whole
    word it is in is dropped instead of leaking its first half."""
    log = ActivityLog(tmp_path, level="info")
    secret = "sk-1234567890abcdefghijklmnop"
    value = "x " * 505 + secret + " tail"  # the key starts at byte 1010 and crosses 1024
    record(log, "info", "activity", "m", text=value)
    log.close()
    (rec,) = read_records(tmp_path)
    assert "sk-" not in rec["text"] and rec["text"].startswith("x x ")
    assert rec["text"] == "x " * 505 + f"…[+{len(value) - 1010} bytes]"


async def test_daemon_api_key_is_redacted_wherever_it_appears(daemon_factory, sockdir):
    """Item 10 (F-3): the daemon's own API key is redacted from every record and stderr line
    whatever it looks like (it matches no pattern here). Old code: written in clear."""
    logs = sockdir / "logs"
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=KEY,
                             activity=ActivityLog(logs, level="info"))
    rid = f"id-{KEY}-tail"
    frames = await tcp_exchange(port, line({"type": "auth", "key": KEY}), line(req(rid)))
    assert frames[-1]["type"] == "done" and frames[-1]["id"] == rid  # the wire is untouched
    assert redact(f"backend said {KEY}!") == "backend said [REDACTED:api-key]!"  # the stderr filter
    on_disk = (logs / LOG_FILE_NAME).read_text()
    assert KEY not in on_disk
    done = [r for r in read_records(logs) if r["msg"] == "request_done"]
    assert done[0]["req_id"] == "id-[REDACTED:api-key]-tail"
