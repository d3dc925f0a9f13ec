"""Embed wire (§9 items 16-20), admin status frames (items 35-36, 40), the TCP auth
frame (item 34's parser cases) and default endpoints (§2.2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inferd.proto import endpoints
from inferd.proto.admin import (
    AdminEvent,
    Capabilities,
    CheckingLocal,
    Download,
    Draining,
    KvCache,
    LoadingModel,
    Mmap,
    Quarantine,
    Ready,
    Restarting,
    Starting,
    Verify,
    encode_status,
    parse_admin_event,
    status_to_dict,
)
from inferd.proto.auth import AuthFrame, keys_match, parse_auth_key
from inferd.proto.embed import (
    EmbeddingsFrame,
    EmbedErrorFrame,
    EmbedRequest,
    EmbedTask,
    EmbedUsage,
    embed_error,
    parse_embed_request,
    parse_embed_response,
)
from inferd.proto.errors import DecodeError, EmbedErrorCode, InvalidRequest
from inferd.proto.framing import encode_frame

# =========================================================================================
# Embed (items 16-20)
# =========================================================================================


def test_embed_empty_input_rejected() -> None:
    req = parse_embed_request(b'{"id":"e","input":[]}')
    with pytest.raises(InvalidRequest) as info:
        req.resolve()
    assert info.value.code == "invalid_request"
    assert info.value.detail == "input must not be empty"


def test_embed_empty_element_rejected_with_index() -> None:
    with pytest.raises(InvalidRequest) as info:
        EmbedRequest(input=["hello", ""]).resolve()
    assert info.value.detail == "input[1] must not be empty"
    with pytest.raises(InvalidRequest) as info:
        EmbedRequest(input=["", "x", ""]).resolve()
    assert info.value.detail == "input[0] must not be empty"


def test_embed_minimal_resolves_without_dimensions_or_task() -> None:
    resolved = EmbedRequest(input=["hello"]).resolve()
    assert resolved.id == ""
    assert resolved.input == ["hello"]
    assert resolved.dimensions is None
    assert resolved.task is None


def test_embed_full_json_parses() -> None:
    req = parse_embed_request(b'{"id":"r1","input":["a","b"],"dimensions":256,"task":"retrieval_document"}')
    assert req.id == "r1"
    assert req.input == ["a", "b"]
    assert req.dimensions == 256
    assert req.task == "retrieval_document"
    resolved = req.resolve()
    assert resolved.task is EmbedTask.RETRIEVAL_DOCUMENT
    assert resolved.dimensions == 256


@pytest.mark.parametrize(
    "task",
    [
        "retrieval_query",
        "retrieval_document",
        "similarity",
        "classification",
        "clustering",
        "question_answering",
        "fact_verification",
        "code_retrieval_query",
    ],
)
def test_every_known_task_resolves(task: str) -> None:
    resolved = EmbedRequest(input=["x"], task=task).resolve()
    assert resolved.task == EmbedTask(task)
    assert resolved.task.value == task


def test_embed_task_set() -> None:
    assert len(EmbedTask) == 8


def test_unknown_task_parses_then_resolve_rejects() -> None:
    req = parse_embed_request(b'{"id":"r9","input":["a"],"task":"some_future_task"}')
    assert req.task == "some_future_task"
    with pytest.raises(InvalidRequest) as info:
        req.resolve()
    assert info.value.code == "invalid_request"
    assert info.value.detail == "task uses an unknown variant"
    assert info.value.message == "invalid request: task uses an unknown variant"


def test_embed_unset_fields_absent_from_json() -> None:
    obj = json.loads(encode_frame(EmbedRequest(id="r1", input=["hello"])))
    assert obj == {"id": "r1", "input": ["hello"]}
    assert "dimensions" not in obj and "task" not in obj


def test_embed_set_fields_present_in_json() -> None:
    req = EmbedRequest(id="r1", input=["hello"], dimensions=128, task="similarity")
    obj = json.loads(encode_frame(req))
    assert obj == {"id": "r1", "input": ["hello"], "dimensions": 128, "task": "similarity"}
    assert parse_embed_request(encode_frame(req)) == req


def test_embed_null_optional_fields_mean_absent() -> None:
    req = parse_embed_request(b'{"input":["a"],"dimensions":null,"task":null}')
    assert req.dimensions is None and req.task is None


def test_embed_unknown_fields_ignored() -> None:
    req = parse_embed_request(b'{"input":["a"],"normalize":true,"future":{"x":1}}')
    assert req.input == ["a"]


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":"x"}',
        b'{"input":"hello"}',
        b'{"input":[1,2]}',
        b'{"input":[null]}',
        b'{"input":["a"],"dimensions":-1}',
        b'{"input":["a"],"dimensions":4294967296}',
        b'{"input":["a"],"dimensions":256.0}',
        b'{"input":["a"],"dimensions":"256"}',
        b'{"input":["a"],"task":5}',
        b"{ this is not json }",
        b"",
        b"[" * 100_000,
    ],
)
def test_embed_decode_errors(line: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        parse_embed_request(line)
    assert info.value.code == "invalid_request"
    assert info.value.message.startswith("decode: ")


def test_embeddings_frame_round_trip() -> None:
    frame = EmbeddingsFrame(
        id="r1",
        embeddings=[[0.1, 0.2], [0.3, 0.4]],
        dimensions=2,
        model="embeddinggemma-300m",
        usage=EmbedUsage(input_tokens=12),
        backend="llamacpp",
    )
    line = encode_frame(frame)
    assert line == (
        b'{"type":"embeddings","id":"r1","embeddings":[[0.1,0.2],[0.3,0.4]],"dimensions":2,'
        b'"model":"embeddinggemma-300m","usage":{"input_tokens":12},"backend":"llamacpp"}\n'
    )
    back = parse_embed_response(line)
    assert isinstance(back, EmbeddingsFrame)
    assert back == frame


def test_embed_error_frame_round_trip() -> None:
    frame = embed_error("r1", EmbedErrorCode.INVALID_REQUEST, "dimensions must be one of [128, 256, 512, 768]")
    line = encode_frame(frame)
    assert line == (
        b'{"type":"error","id":"r1","code":"invalid_request",'
        b'"message":"dimensions must be one of [128, 256, 512, 768]"}\n'
    )
    back = parse_embed_response(line)
    assert isinstance(back, EmbedErrorFrame)
    assert back == frame


def test_embed_unsupported_code_string() -> None:
    assert EmbedErrorCode.EMBED_UNSUPPORTED == "embed_unsupported"
    line = encode_frame(embed_error("x", EmbedErrorCode.EMBED_UNSUPPORTED, "embed not supported by this backend"))
    assert b'"code":"embed_unsupported"' in line
    back = parse_embed_response(line)
    assert isinstance(back, EmbedErrorFrame) and back.code == "embed_unsupported"


def test_embed_error_code_set() -> None:
    assert {c.value for c in EmbedErrorCode} == {
        "queue_full",
        "backend_unavailable",
        "invalid_request",
        "frame_too_large",
        "internal",
        "embed_unsupported",
        "model_not_found",
    }


def test_embed_response_unknown_type_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        parse_embed_response(b'{"type":"token","id":"x","content":"y"}')


# =========================================================================================
# Admin status frames (items 35-36)
# =========================================================================================


def frame_of(event) -> dict:
    line = encode_status(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj == status_to_dict(event)
    return obj


def test_starting_envelope_exact() -> None:
    assert encode_status(Starting()) == b'{"id":"admin","type":"status","status":"starting"}\n'


def test_ready_and_draining_envelopes() -> None:
    assert frame_of(Ready()) == {"id": "admin", "type": "status", "status": "ready"}
    assert frame_of(Draining()) == {"id": "admin", "type": "status", "status": "draining"}


def test_bare_status_events_serialise_alone() -> None:
    assert Starting().model_dump() == {"status": "starting"}
    assert Ready().model_dump(exclude_none=True) == {"status": "ready"}


def test_ready_reload_error_extension_only_when_set() -> None:
    assert frame_of(Ready(reload_error="bad gguf"))["reload_error"] == "bad gguf"
    assert "reload_error" not in frame_of(Ready())


def test_download_flattens_phase_keys() -> None:
    event = LoadingModel(
        phase=Download(downloaded_bytes=33554432, total_bytes=5126304928, source_url="https://example/x.gguf")
    )
    assert frame_of(event) == {
        "id": "admin",
        "type": "status",
        "status": "loading_model",
        "phase": "download",
        "downloaded_bytes": 33554432,
        "total_bytes": 5126304928,
        "source_url": "https://example/x.gguf",
    }


def test_download_unknown_total_is_null_not_absent() -> None:
    line = encode_status(LoadingModel(phase=Download(downloaded_bytes=0, total_bytes=None, source_url="u")))
    assert b'"total_bytes":null' in line
    obj = json.loads(line)
    assert "total_bytes" in obj and obj["total_bytes"] is None
    assert "detail" not in obj


def test_checking_local_carries_path() -> None:
    assert frame_of(LoadingModel(phase=CheckingLocal(path="/models/m.gguf"))) == {
        "id": "admin",
        "type": "status",
        "status": "loading_model",
        "phase": "checking_local",
        "path": "/models/m.gguf",
    }


def test_quarantine_carries_both_hashes() -> None:
    obj = frame_of(
        LoadingModel(
            phase=Quarantine(
                path="/m/x.gguf",
                expected_sha256="a" * 64,
                actual_sha256="b" * 64,
                quarantine_path="/m/quarantine/x.gguf",
            )
        )
    )
    assert obj["phase"] == "quarantine"
    assert obj["expected_sha256"] == "a" * 64
    assert obj["actual_sha256"] == "b" * 64
    assert obj["path"] == "/m/x.gguf"
    assert obj["quarantine_path"] == "/m/quarantine/x.gguf"


@pytest.mark.parametrize(
    "phase, extra",
    [
        (Verify(path="/p"), {"phase": "verify", "path": "/p"}),
        (Mmap(path="/p"), {"phase": "mmap", "path": "/p"}),
        (KvCache(n_ctx=8192), {"phase": "kv_cache", "n_ctx": 8192}),
    ],
)
def test_other_phases(phase, extra) -> None:
    assert frame_of(LoadingModel(phase=phase)) == {"id": "admin", "type": "status", "status": "loading_model", **extra}
    assert frame_of(Restarting(phase=phase)) == {"id": "admin", "type": "status", "status": "restarting", **extra}


def test_capabilities_omit_unknown_optionals() -> None:
    obj = frame_of(Capabilities(backend="llamacpp", v2=True, tools=True, thinking=True))
    assert obj == {
        "id": "admin",
        "type": "status",
        "status": "capabilities",
        "backend": "llamacpp",
        "v2": True,
        "vision": False,
        "audio": False,
        "tools": True,
        "thinking": True,
        "embed": False,
        "accelerator": "cpu",
        "gpu_layers": 0,
    }
    assert "device_name" not in obj and "vram_total_bytes" not in obj


def test_capabilities_with_device_and_extensions() -> None:
    obj = frame_of(
        Capabilities(
            backend="gpu",
            accelerator="cuda",
            gpu_layers=99,
            device_name="RTX 4090",
            vram_total_bytes=25_757_220_864,
            model="gemma-3-270m",
            n_ctx=4096,
        )
    )
    assert obj["device_name"] == "RTX 4090"
    assert obj["vram_total_bytes"] == 25_757_220_864
    assert (obj["accelerator"], obj["gpu_layers"]) == ("cuda", 99)
    assert (obj["model"], obj["n_ctx"]) == ("gemma-3-270m", 4096)


def test_status_envelope_keys_come_first() -> None:
    keys = list(json.loads(encode_status(LoadingModel(phase=KvCache(n_ctx=1)))))
    assert keys[:3] == ["id", "type", "status"]


# ---- client-side AdminEvent (item 40) -----------------------------------------------------


def test_admin_event_decodes_download() -> None:
    ev = parse_admin_event(
        b'{"id":"admin","type":"status","status":"loading_model","phase":"download",'
        b'"downloaded_bytes":33554432,"total_bytes":5126304928,"source_url":"https://x"}'
    )
    assert (ev.id, ev.kind, ev.status, ev.phase) == ("admin", "status", "loading_model", "download")
    assert ev.downloaded_bytes == 33554432
    assert ev.total_bytes == 5126304928
    assert ev.source_url == "https://x"
    assert not ev.is_ready


def test_admin_event_ready_has_no_phase() -> None:
    ev = parse_admin_event(encode_status(Ready()))
    assert ev.is_ready
    assert ev.phase == ""
    assert ev.downloaded_bytes is None and ev.total_bytes is None


def test_admin_event_null_total() -> None:
    ev = parse_admin_event(encode_status(LoadingModel(phase=Download(downloaded_bytes=5, total_bytes=None, source_url="u"))))
    assert ev.total_bytes is None
    assert ev.downloaded_bytes == 5


def test_admin_event_tolerates_unknown_status_phase_and_keys() -> None:
    ev = parse_admin_event(
        b'{"id":"admin","type":"status","status":"hibernating","phase":"warp_drive",'
        b'"future_key":{"nested":[1,2]},"another":null,"wire_version":7}'
    )
    assert ev.status == "hibernating"
    assert ev.phase == "warp_drive"
    assert not ev.is_ready


def test_admin_event_parses_every_frame_we_emit() -> None:
    events = [
        Starting(),
        LoadingModel(phase=CheckingLocal(path="/p")),
        LoadingModel(phase=Quarantine(path="/p", expected_sha256="e", actual_sha256="a", quarantine_path="/q")),
        Capabilities(backend="mock", embed=True, device_name="cpu0", vram_total_bytes=1),
        Ready(),
        Restarting(phase=KvCache(n_ctx=2048)),
        Draining(),
    ]
    for event in events:
        ev = parse_admin_event(encode_status(event))
        assert ev.status == event.status
    caps = parse_admin_event(encode_status(events[3]))
    assert (caps.backend, caps.embed, caps.device_name, caps.vram_total_bytes) == ("mock", True, "cpu0", 1)
    quarantine = parse_admin_event(encode_status(events[2]))
    assert (quarantine.expected_sha256, quarantine.actual_sha256) == ("e", "a")
    assert parse_admin_event(encode_status(events[5])).n_ctx == 2048


@pytest.mark.parametrize("line", [b"not json", b"{}", b'{"id":"admin","type":"status"}', b"[]"])
def test_admin_event_garbage_is_decode_error(line: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_admin_event(line)


# =========================================================================================
# TCP auth frame (item 34 parser cases)
# =========================================================================================


def test_auth_frame_ok() -> None:
    assert parse_auth_key(b'{"type":"auth","key":"secret"}') == "secret"
    assert parse_auth_key(b'{"key":"secret","type":"auth","extra":1}') == "secret"
    assert parse_auth_key(encode_frame(AuthFrame(key="k3y"))) == "k3y"
    assert encode_frame(AuthFrame(key="secret")) == b'{"type":"auth","key":"secret"}\n'


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"request","id":"r1","messages":[{"role":"user","content":"hi"}]}',
        b'{"id":"r1","messages":[{"role":"user","content":"hi"}]}',
        b"garbage",
        b"",
        b"\xff\xfe\xfd",
        b'{"type":"auth"}',
        b'{"type":"auth","key":null}',
        b'{"type":"auth","key":42}',
        b'{"type":"AUTH","key":"secret"}',
        b'["auth","secret"]',
        b'"secret"',
        b"[" * 100_000,
    ],
)
def test_not_an_auth_frame(line: bytes) -> None:
    assert parse_auth_key(line) is None


def test_keys_match_is_exact() -> None:
    assert keys_match("secret", "secret")
    assert not keys_match("secret", "Secret")
    assert not keys_match("secret", "secret ")
    assert not keys_match("secre", "secret")
    assert not keys_match("", "secret")
    assert keys_match("ключ", "ключ")
    assert not keys_match("ключ", "ключа")


# =========================================================================================
# Default endpoints (§2.2)
# =========================================================================================


def linux(env: dict[str, str]) -> dict[str, str]:
    return {
        "infer": endpoints.default_inference_addr(env, "linux"),
        "v2": endpoints.default_v2_addr(env, "linux"),
        "embed": endpoints.default_embed_addr(env, "linux"),
        "admin": endpoints.default_admin_addr(env, "linux"),
        "lock": endpoints.default_lock_path(env, "linux"),
    }


def test_linux_xdg_runtime_dir() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    assert linux(env) == {
        "infer": "/run/user/1000/inferd/infer.sock",
        "v2": "/run/user/1000/inferd/infer.v2.sock",
        "embed": "/run/user/1000/inferd/infer.embed.sock",
        "admin": "/run/user/1000/inferd/admin.sock",
        "lock": "/run/user/1000/inferd/inferd.lock",
    }


def test_linux_empty_xdg_falls_back_to_home() -> None:
    env = {"XDG_RUNTIME_DIR": "", "HOME": "/home/u"}
    assert endpoints.runtime_dir(env, "linux") == Path("/home/u/.inferd/run")
    assert linux(env)["infer"] == "/home/u/.inferd/run/infer.sock"
    assert linux(env)["admin"] == "/home/u/.inferd/run/admin.sock"
    assert linux({"HOME": "/home/u"})["embed"] == "/home/u/.inferd/run/infer.embed.sock"


def test_linux_neither_falls_back_to_per_user_tmp() -> None:
    uid = os.geteuid()
    for env in ({}, {"XDG_RUNTIME_DIR": "", "HOME": ""}):
        assert endpoints.runtime_dir(env, "linux") == Path(f"/tmp/inferd-{uid}")
        assert linux(env)["infer"] == f"/tmp/inferd-{uid}/infer.sock"
        assert linux(env)["admin"] == f"/tmp/inferd-{uid}/admin.sock"
        assert linux(env)["lock"] == f"/tmp/inferd-{uid}/inferd.lock"


def test_macos_tmpdir() -> None:
    env = {"TMPDIR": "/var/folders/ab/T/", "XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/Users/u"}
    assert endpoints.default_inference_addr(env, "darwin") == "/var/folders/ab/T/inferd/infer.sock"
    assert endpoints.default_v2_addr(env, "darwin") == "/var/folders/ab/T/inferd/infer.v2.sock"
    assert endpoints.default_embed_addr(env, "darwin") == "/var/folders/ab/T/inferd/infer.embed.sock"
    assert endpoints.default_admin_addr(env, "darwin") == "/var/folders/ab/T/inferd/admin.sock"


def test_other_unix_uses_tmp_inferd() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/home/u"}
    assert endpoints.default_inference_addr(env, "freebsd14") == "/tmp/inferd/infer.sock"


def test_windows_pipe_names() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1", "HOME": "/home/u"}
    assert endpoints.default_inference_addr(env, "win32") == "\\\\.\\pipe\\inferd-infer"
    assert endpoints.default_v2_addr(env, "win32") == "\\\\.\\pipe\\inferd-infer-v2"
    assert endpoints.default_embed_addr(env, "win32") == "\\\\.\\pipe\\inferd-infer-embed"
    assert endpoints.default_admin_addr(env, "win32") == "\\\\.\\pipe\\inferd-admin"


def test_admin_addr_override() -> None:
    env = {"INFERD_ADMIN_ADDR": "/custom/admin.sock", "XDG_RUNTIME_DIR": "/run/user/1"}
    assert endpoints.default_admin_addr(env, "linux") == "/custom/admin.sock"
    assert endpoints.default_admin_addr(env, "darwin") == "/custom/admin.sock"
    assert endpoints.default_admin_addr({"INFERD_ADMIN_ADDR": r"\\.\pipe\x"}, "win32") == r"\\.\pipe\x"
    # The override only moves the admin socket.
    assert endpoints.default_inference_addr(env, "linux") == "/run/user/1/inferd/infer.sock"
    # Empty means unset.
    env["INFERD_ADMIN_ADDR"] = ""
    assert endpoints.default_admin_addr(env, "linux") == "/run/user/1/inferd/admin.sock"


def test_explicit_env_is_not_mixed_with_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/proc-env/xdg")
    monkeypatch.setenv("INFERD_ADMIN_ADDR", "/proc-env/admin.sock")
    env = {"HOME": "/home/u"}
    assert endpoints.default_inference_addr(env, "linux") == "/home/u/.inferd/run/infer.sock"
    assert endpoints.default_admin_addr(env, "linux") == "/home/u/.inferd/run/admin.sock"
    # With no env given, the process environment is used.
    assert endpoints.default_inference_addr(None, "linux") == "/proc-env/xdg/inferd/infer.sock"
    assert endpoints.default_admin_addr(None, "linux") == "/proc-env/admin.sock"


def test_windows_lock_path_honours_explicit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert endpoints.default_lock_path({"LOCALAPPDATA": "C:/Users/u/AppData/Local"}, "win32") == str(
        Path("C:/Users/u/AppData/Local") / "inferd" / "inferd.lock"
    )
    # An explicit (empty) env must not fall back to the process environment.
    monkeypatch.setenv("LOCALAPPDATA", "/proc-env/local")
    assert endpoints.default_lock_path({}, "win32") == str(Path.home() / "inferd" / "inferd.lock")


def test_embed_input_count_is_capped():
    from inferd.proto.embed import MAX_EMBED_INPUTS

    ok = EmbedRequest(input=["x"] * MAX_EMBED_INPUTS).resolve()
    assert len(ok.input) == 2048
    with pytest.raises(InvalidRequest, match="input has 2049 entries; at most 2048 per request"):
        EmbedRequest(input=["x"] * (MAX_EMBED_INPUTS + 1)).resolve()
