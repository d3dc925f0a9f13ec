"""AMX (ADR 0019): the decision, the mechanism that withholds it, and a real load.

The decision is a pure function, tested for every case on any CPU. The mechanism is
tested in child processes (a seccomp filter cannot be lifted). The load test runs
the engine's own loading path on the real model: on an AMX machine without the fix
the process would die on the first decode.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inferd.daemon.config import ConfigFile, LlamaCppEntry, ServeOptions, effective_config, parse_config
from inferd.daemon.doctor import selftest_check
from inferd.engine.llamacpp.amx import AMX_ISSUE, NO_AMX, parse_system_info, plan_amx

REAL_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | "
             "AVX512_VNNI = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
WITH_AMX = parse_system_info(REAL_INFO)
WITHOUT_AMX = parse_system_info(REAL_INFO.replace("AMX_INT8 = 1 | ", ""))


def test_system_info_is_read_feature_by_feature():
    assert WITH_AMX["AMX_INT8"] == "1" and WITH_AMX["AVX2"] == "1" and WITH_AMX["SSE3"] == "1"
    assert "AMX_INT8" not in WITHOUT_AMX
    # Another backend's group ("CUDA : ARCHS = 890 | ...") is read too, without its prefix.
    assert parse_system_info("CPU : AVX2 = 1 | CUDA : ARCHS = 890 | USE_GRAPHS = 1 |")["ARCHS"] == "890"


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_a_build_without_amx_changes_nothing(mode):
    plan = plan_amx(mode, WITHOUT_AMX, can_withhold=True)
    assert (plan.kernels, plan.extra_bufts, plan.withhold, plan.reason, plan.setting) == (
        False, True, False, NO_AMX, "absent")


def test_auto_withholds_amx_and_keeps_the_repacked_kernels():
    plan = plan_amx("auto", WITH_AMX, can_withhold=True)
    assert (plan.kernels, plan.extra_bufts, plan.withhold, plan.setting) == (False, True, True, "off")
    assert plan.reason.startswith("AMX kernels disabled: known to fault in this llama.cpp build")
    assert AMX_ISSUE in plan.reason


def test_off_says_it_was_configured():
    plan = plan_amx("off", WITH_AMX, can_withhold=True)
    assert (plan.kernels, plan.withhold) == (False, True)
    assert "by configuration (amx: off)" in plan.reason


def test_on_lets_the_kernels_run():
    plan = plan_amx("on", WITH_AMX, can_withhold=True)
    assert (plan.kernels, plan.extra_bufts, plan.withhold, plan.setting) == (True, True, False, "on")


def test_where_amx_cannot_be_withheld_alone_no_extra_buffer_types_are_used():
    plan = plan_amx("auto", WITH_AMX, can_withhold=False)
    assert (plan.kernels, plan.extra_bufts, plan.withhold) == (False, False, False)
    assert "not repacked" in plan.reason


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="amx must be one of auto, on, off"):
        plan_amx("maybe", WITH_AMX, can_withhold=True)  # type: ignore[arg-type]


def test_the_setting_is_a_config_key_and_a_serve_flag():
    assert LlamaCppEntry(kind="llamacpp", model_path="/m.gguf").amx == "auto"
    with pytest.raises(Exception, match="amx"):
        parse_config({"backends": [{"kind": "llamacpp", "model_path": "/m.gguf", "amx": "sometimes"}]})
    cfg, _ = effective_config(ServeOptions(backend="llamacpp", model_path="/m.gguf", llamacpp={"amx": "on"}))
    assert isinstance(cfg, ConfigFile) and cfg.backends[0].amx == "on"


def _child(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux's")
def test_withholding_refuses_only_the_amx_permission_request():
    out = _child(
        "import ctypes, json\n"
        "from inferd.engine.llamacpp import amx\n"
        "import threading\n"
        "from inferd.engine.llamacpp import amx\n"
        "# Decided on another thread, as the daemon's loader thread does: it holds for all.\n"
        "t = threading.Thread(target=lambda: (amx.withhold_amx(), amx.withhold_amx())); t.start(); t.join()\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "get = libc.syscall(158, 0x1022, ctypes.byref(ctypes.c_uint64()))  # ARCH_GET_XCOMP_PERM\n"
        "import subprocess, sys\n"
        "child = subprocess.run([sys.executable, '-c', 'from inferd.engine.llamacpp import amx; "
        "print(amx.request_amx_permission())'], capture_output=True, text=True).stdout.strip()\n"
        "print(json.dumps([amx.request_amx_permission(), get, amx.amx_withheld(), int(child)]))\n")
    refused, get_perm, withheld, in_child = json.loads(out)
    assert refused == 1  # EPERM: llama.cpp then says "AMX is not ready" and places weights without it
    assert get_perm == 0  # other arch_prctl calls pass
    assert withheld is True
    assert in_child == 1  # a process it starts (a server under test, a runner) inherits it


def test_the_engine_loads_without_amx_buffers_and_decodes(model_path):
    """The engine's loading path on the real model: no weight lands in the AMX buffer
    type, the repacked CPU kernels stay where the build has them, and a greedy token
    comes out (on an AMX CPU without the fix this process would die here)."""
    out = _child(
        "import json, sys\n"
        "from inferd.engine.llamacpp import native\n"
        "from inferd.engine.llamacpp.selftest import decode_one_token\n"
        "from inferd.engine.llamacpp.settings import LlamaCppSettings\n"
        "plan = native.init_backend(amx_mode='auto')\n"
        "import llama_cpp.llama_cpp as L\n"
        "with native.capture_native_log() as lines:\n"
        "    L.llama_model_free(native.load_model(sys.argv[1], 0, repack=plan.extra_bufts))\n"
        "result = decode_one_token(LlamaCppSettings(model_path=sys.argv[1], n_threads=2))\n"
        "print(json.dumps({'log': ''.join(lines), 'features': native.system_features(), 'result': result}))\n"
        .replace("sys.argv[1]", repr(model_path)))
    said = json.loads(out)
    log, features, result = said["log"], said["features"], said["result"]
    assert "AMX model buffer" not in log
    assert result["ok"] and result["piece"].strip("▁ ") == "the"
    if features.get("REPACK") == "1" and features.get("AVX2") == "1":
        assert "CPU_REPACK model buffer" in log  # Q4_K weights repacked, as llama.cpp's tools do
    assert result["amx"] == ("off" if features.get("AMX_INT8") == "1" else "absent")


def test_doctor_self_test_decodes_one_token_with_the_configured_settings(model_path):
    entry = LlamaCppEntry(kind="llamacpp", name="main", model_path=model_path, n_threads=2)
    ok, label, detail = selftest_check(entry, ConfigFile(backends=[entry]))
    assert (ok, label) == (True, "selftest[main]"), detail
    assert "one-token decode ok" in detail and "'▁the'" in detail
    assert "cpu_features=" in detail and "AVX" in detail


def test_doctor_self_test_names_a_fault_instead_of_dying(model_path, monkeypatch):
    monkeypatch.setenv("INFERD_SELFTEST_FAULT", "segv")
    entry = LlamaCppEntry(kind="llamacpp", name="main", model_path=model_path)
    ok, _, detail = selftest_check(entry, ConfigFile(backends=[entry]))
    assert not ok
    assert detail.startswith("the engine died with SIGSEGV during a one-token decode (amx=auto")


def test_doctor_self_test_reports_an_unloadable_model(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    entry = LlamaCppEntry(kind="llamacpp", name="main", model_path=str(bad))
    ok, _, detail = selftest_check(entry, ConfigFile(backends=[entry]))
    assert not ok and detail.startswith("failed: ValueError: llama.cpp could not load the model")
