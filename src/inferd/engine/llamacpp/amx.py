"""Whether llama.cpp's AMX matmul kernels may run in this process (ADR 0019).

A llama.cpp built for the native CPU on an Intel CPU with AMX (Sapphire Rapids and
later) places quantised weights in its "AMX" buffer type, and on such machines its
kernels fault on the first decode (llama.cpp issue 20824): the process dies. The
repacked CPU kernels (the "CPU_REPACK" buffer type) and plain CPU kernels do not.

llama.cpp registers the AMX buffer type only if the kernel grants the process the
AMX tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); when that
request fails it prints "AMX is not ready to be used!" and places every weight as a
build without AMX would, repacking included. So on Linux x86-64 the engine withholds
AMX by making exactly that request fail (a one-rule seccomp filter, installed before
llama.cpp first lists its buffer types). Where that is not possible, the engine turns
off every extra buffer type instead (`use_extra_bufts = false`), which costs the
repacked kernels' speed on Q4_0 / IQ4_NL models.

Nothing here imports llama_cpp: the decision is a pure function of llama.cpp's system
info and the setting, unit-tested on any CPU.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("inferd.engine.llamacpp")

AmxMode = Literal["auto", "on", "off"]
AMX_MODES: tuple[AmxMode, ...] = ("auto", "on", "off")

#: The llama.cpp issue behind "auto = off": cited in every reason a user reads.
AMX_ISSUE = "llama.cpp issue 20824"


@dataclass(frozen=True)
class AmxPlan:
    """What the engine does about AMX in this process, and why (shown to the user)."""

    #: llama.cpp's AMX kernels may run.
    kernels: bool
    #: Extra CPU buffer types (repacked weights) stay in use.
    extra_bufts: bool
    #: The process withholds AMX tile permission from llama.cpp (seccomp, Linux x86-64).
    withhold: bool
    reason: str

    @property
    def setting(self) -> str:
        """One word for capabilities and doctor: on | off | absent."""
        return "absent" if self.reason.startswith(NO_AMX) else ("on" if self.kernels else "off")


NO_AMX = "this llama.cpp build has no AMX kernels"


def parse_system_info(text: str) -> dict[str, str]:
    """`llama_print_system_info()` ("CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | ...")
    as {feature: value}; backends other than CPU add their own "NAME : ..." groups."""
    features: dict[str, str] = {}
    for group in text.split("|"):
        if ":" in group.split("=")[0]:
            group = group.split(":", 1)[1]
        if "=" in group:
            key, value = group.split("=", 1)
            if key.strip():
                features[key.strip()] = value.strip()
    return features


def cpu_features_used(features: dict[str, str]) -> list[str]:
    """The instruction-set features llama.cpp was built to use, as it names them."""
    return [k for k, v in features.items() if v == "1" and k not in ("LLAMAFILE", "OPENMP", "REPACK")]


def plan_amx(mode: AmxMode, features: dict[str, str], *, can_withhold: bool) -> AmxPlan:
    """The decision, given llama.cpp's system info and the `amx` setting.

    "auto" keeps AMX kernels off in every llama.cpp build known so far: none carries a
    fix for the fault (ADR 0019 says what would change this).
    """
    if mode not in AMX_MODES:
        raise ValueError(f"amx must be one of {', '.join(AMX_MODES)}, got {mode!r}")
    if features.get("AMX_INT8") != "1":
        return AmxPlan(kernels=False, extra_bufts=True, withhold=False, reason=NO_AMX)
    if mode == "on":
        return AmxPlan(kernels=True, extra_bufts=True, withhold=False,
                       reason="AMX kernels enabled by configuration (amx: on)")
    why = (f"AMX kernels disabled: known to fault in this llama.cpp build ({AMX_ISSUE})"
           if mode == "auto" else "AMX kernels disabled by configuration (amx: off)")
    if can_withhold:
        return AmxPlan(kernels=False, extra_bufts=True, withhold=True,
                       reason=f"{why}; repacked CPU kernels kept")
    return AmxPlan(kernels=False, extra_bufts=False, withhold=False,
                   reason=f"{why}; this platform cannot withhold AMX alone, so weights are not repacked")


# ---- withholding AMX (Linux x86-64) ---------------------------------------------------

_SYS_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_AUDIT_ARCH_X86_64 = 0xC000003E
_PR_SET_NO_NEW_PRIVS = 38
_SYS_SECCOMP = 317  # x86-64 syscall number
_SECCOMP_SET_MODE_FILTER = 1
#: Every thread of the process, not only the caller (a filter is per thread otherwise:
#: the engine decides on a loader thread, and the main thread spawns processes).
_SECCOMP_FILTER_FLAG_TSYNC = 1
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1
# BPF opcodes: load word at absolute offset, jump if equal to constant, return constant.
_LD_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06
# struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (low 32 bits, little-endian).
_NR, _ARCH, _ARG0 = 0, 4, 16

_withheld = False
_lock = threading.Lock()


def can_withhold() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def _filter_program() -> bytes:
    """Refuse arch_prctl(ARCH_REQ_XCOMP_PERM, ...) with EPERM; allow every other call."""

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    return b"".join([
        op(_LD_ABS, _ARCH),
        op(_JEQ_K, _AUDIT_ARCH_X86_64, 1, 0),
        op(_RET_K, _SECCOMP_RET_ALLOW),
        op(_LD_ABS, _NR),
        op(_JEQ_K, _SYS_ARCH_PRCTL, 0, 3),
        op(_LD_ABS, _ARG0),
        op(_JEQ_K, _ARCH_REQ_XCOMP_PERM, 0, 1),
        op(_RET_K, _SECCOMP_RET_ERRNO | _EPERM),
        op(_RET_K, _SECCOMP_RET_ALLOW),
    ])


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def withhold_amx() -> None:
    """Make the kernel's AMX permission request fail for every thread of this process
    and for its children.

    Irreversible (seccomp filters cannot be removed), so it is decided once per process:
    with runner processes, once per runner. Sets PR_SET_NO_NEW_PRIVS, which an
    unprivileged filter requires and which the daemon never needs to be without (it
    execs nothing that gains privileges). Raises OSError if the kernel refuses.
    """
    global _withheld
    with _lock:
        if _withheld:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        program = _filter_program()
        buf = ctypes.create_string_buffer(program, len(program))
        prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS) failed: errno {err}")
        res = libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(prog))
        if res != 0:
            err = ctypes.get_errno() if res < 0 else 0
            raise OSError(err, f"seccomp filter refused: {'errno %d' % err if res < 0 else f'thread {res} cannot sync'}")
        _withheld = True


def amx_withheld() -> bool:
    return _withheld


def request_amx_permission() -> int:
    """The request llama.cpp makes (0 = granted, else the errno): what tests check."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0:
        return 0
    return ctypes.get_errno()
