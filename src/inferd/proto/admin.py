"""Admin socket wire: lifecycle status events, daemon -> client only (upstream-protocol §4).

Every frame is `{"id":"admin","type":"status","status":...}` with the event's detail
flattened next to those keys (a load phase's `phase` and its fields included).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import DecodeError


# ---- load phases ---------------------------------------------------------------

class CheckingLocal(BaseModel):
    phase: Literal["checking_local"] = "checking_local"
    path: str


class Download(BaseModel):
    phase: Literal["download"] = "download"
    downloaded_bytes: int
    total_bytes: int | None  # serialised as null when unknown, never omitted
    source_url: str


class Verify(BaseModel):
    phase: Literal["verify"] = "verify"
    path: str


class Quarantine(BaseModel):
    phase: Literal["quarantine"] = "quarantine"
    path: str
    expected_sha256: str
    actual_sha256: str
    quarantine_path: str


class Mmap(BaseModel):
    phase: Literal["mmap"] = "mmap"
    path: str


class KvCache(BaseModel):
    phase: Literal["kv_cache"] = "kv_cache"
    n_ctx: int


class WaitingRemote(BaseModel):
    """inferd extension: a remote backend did not answer its probe; the loader retries.

    Published after `checking_local` named the URL, once per failed probe, so the
    snapshot of a daemon stuck in loading says why (`reason`) and when it tries
    again. Clients that do not know the phase ignore it (upstream-protocol §4.6).
    """

    phase: Literal["waiting_remote"] = "waiting_remote"
    #: The remote's API root, as `checking_local` named it.
    path: str
    reason: str
    #: Failed probes so far (1 on the first).
    attempt: int
    retry_in_ms: int


class RunnerRestart(BaseModel):
    """inferd extension: a backend's runner process ended unasked and another one is
    starting (ADR 0025). `reason` names what happened ("engine crashed: SIGSEGV")."""

    phase: Literal["runner_restart"] = "runner_restart"
    backend: str
    reason: str
    #: Restarts of this backend's runner so far (1 on the first).
    attempt: int
    #: `safe` once the runner crashed in its default profile (ADR 0025).
    profile: Literal["default", "safe"]
    retry_in_ms: int


LoadPhase = Annotated[
    Union[CheckingLocal, Download, Verify, Quarantine, Mmap, KvCache, WaitingRemote, RunnerRestart],
    Field(discriminator="phase"),
]


# ---- status events -------------------------------------------------------------

class Starting(BaseModel):
    status: Literal["starting"] = "starting"


class LoadingModel(BaseModel):
    status: Literal["loading_model"] = "loading_model"
    phase: LoadPhase


class BackendCapabilities(BaseModel):
    """What one backend can do: the engine reports it, the admin frame carries it."""

    v2: bool = False
    vision: bool = False
    audio: bool = False
    tools: bool = False
    thinking: bool = False
    embed: bool = False
    accelerator: str = "cpu"
    gpu_layers: int = 0
    # Optional fields are omitted from the wire when unknown.
    device_name: str | None = None
    vram_total_bytes: int | None = None
    # inferd extensions
    model: str | None = None
    n_ctx: int | None = None
    #: Sequences decoded together (parallel slots); None for backends without slots.
    parallel: int | None = None
    #: Whether llama.cpp runs flash attention (ADR 0018); None when unknown or not llama.cpp.
    flash_attn: bool | None = None
    #: CPU threads of one decode step and of a prompt batch (issue 18: by default one
    #: per physical core this process may use, as llama.cpp's tools count). None when
    #: not llama.cpp.
    n_threads: int | None = None
    n_threads_batch: int | None = None
    #: The CPUs llama.cpp's decode threads are kept on, in thread order (cpu_strict, ADR
    #: 0035 addendum 5); [] where the kernel places them. None when not llama.cpp.
    decode_cpus: list[int] | None = None
    #: How often at most a llama.cpp runner sends a stream's events while its decode
    #: steps are shorter, in ms (ADR 0035 addendum 4: 30 where the decode threads take
    #: every CPU, else 3). None in process and for other backends.
    frame_interval_ms: float | None = None
    #: llama.cpp's AMX kernels (ADR 0019): "on", "off" (withheld) or "absent" (not in the
    #: build); with the reason a user reads. None for backends other than llama.cpp.
    amx: str | None = None
    amx_reason: str | None = None
    #: The CPU instruction-set features the llama.cpp build uses (its system info).
    cpu_features: list[str] | None = None
    #: The runner process serving this backend (ADR 0025); None when it runs in process.
    runner: "RunnerInfo | None" = None


class RunnerCrash(BaseModel):
    """The last time a backend's runner ended unasked."""

    reason: str
    #: How long that runner had been up.
    uptime_secs: float
    #: The ids of the requests it was serving, as their clients sent them.
    requests: list[str]
    #: Unix time of the crash.
    at: float


class RunnerInfo(BaseModel):
    pid: int | None = None
    #: `safe`: no extra buffer types, flash attention off, AMX off, after a crash in the default profile.
    profile: Literal["default", "safe"] = "default"
    #: `ready`, `restarting` or `failed` (the safe profile crashed too; `reason` says why).
    state: Literal["ready", "restarting", "failed"] = "ready"
    restarts: int = 0
    reason: str | None = None
    last_crash: RunnerCrash | None = None


BackendCapabilities.model_rebuild()


class Capabilities(BackendCapabilities):
    """The admin frame for one configured backend. `backend` is the config entry's name."""

    status: Literal["capabilities"] = "capabilities"
    backend: str
    #: The daemon's version (inferd extension).
    version: str | None = None


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    # inferd extension: set when a reload failed and the previous model keeps serving.
    reload_error: str | None = None


class Restarting(BaseModel):
    status: Literal["restarting"] = "restarting"
    phase: LoadPhase


class Draining(BaseModel):
    status: Literal["draining"] = "draining"


class BackendState(BaseModel):
    """inferd extension: a backend's circuit breaker changed state (THREAT_MODEL F-10).

    `open`: `failures` consecutive backend faults (the last one is `reason`); no
    request goes there for `retry_in_ms`. `half_open`: the cool-down passed and one
    trial request is on its way. `closed`: the trial succeeded, the backend is back.
    Like capabilities, it never replaces the lifecycle snapshot: a subscriber that
    connects later finds a backend's current state (when not closed) as `state` and
    `reason` on that backend's replayed capabilities frame. Old clients ignore the
    unknown status (upstream-protocol §4.6).
    """

    status: Literal["backend_state"] = "backend_state"
    backend: str
    state: Literal["closed", "open", "half_open", "failed"]
    reason: str | None = None
    failures: int = 0
    retry_in_ms: int | None = None


class SequenceSlot(BaseModel):
    """One request decoding in a backend's slot (ADR 0018)."""

    slot: int
    #: The request's own id, as its client sent it.
    request: str
    #: `prefill` while its prompt is evaluated, then `decode`.
    state: Literal["prefill", "decode"]
    prompt_tokens: int
    #: Prompt tokens that came from the cache (this slot's own or copied from another).
    cached_tokens: int


class Sequences(BaseModel):
    """inferd extension: the requests a backend decodes right now, by slot (ADR 0018).

    Published when a request enters a slot, finishes its prompt, or leaves; a backend
    with `parallel` slots runs at most that many. Like `backend_state` it never
    replaces the lifecycle snapshot: a subscriber that connects later finds the
    current list as `sequences` on that backend's replayed capabilities frame (absent
    while nothing runs). Old clients ignore the unknown status (upstream-protocol §4.6).
    """

    status: Literal["sequences"] = "sequences"
    backend: str
    sequences: list[SequenceSlot] = Field(default_factory=list)


class ModelState(BaseModel):
    """A model's life (issue 20, ADR 0034): `loading` (with the load phase, as at boot),
    `loaded`, `idle` (counting down to `expires_at`), `unloaded` (with the reason:
    expired, keep_alive 0, evicted to make room), `failed`. Live news like
    `backend_state`: it never replaces the lifecycle snapshot; a loaded model's memory
    and expiry ride on its backend's replayed capabilities frame (what `inferd ps` reads)."""

    status: Literal["model"] = "model"
    model: str
    state: Literal["loading", "loaded", "idle", "unloaded", "failed"]
    phase: LoadPhase | None = None
    reason: str | None = None
    #: The memory the budget counts for it (estimated before loading).
    memory_bytes: int | None = None
    #: Unix time when it is unloaded if still idle; absent = not counting down.
    expires_at: float | None = None
    #: Its backend entry, when loaded (`capabilities` frames are named by it).
    backend: str | None = None


StatusEvent = Annotated[
    Union[Starting, LoadingModel, Capabilities, Ready, Restarting, Draining, BackendState, Sequences, ModelState],
    Field(discriminator="status"),
]


def status_to_dict(event: BaseModel) -> dict[str, Any]:
    """The flattened wire object for one event."""
    out: dict[str, Any] = {"id": "admin", "type": "status"}
    data = event.model_dump()
    out["status"] = data.pop("status")
    if "backend" in data:
        out["backend"] = data.pop("backend")
    phase = data.pop("phase", None)
    # Optional extras are omitted when unknown; a phase's fields are kept as they are
    # (download.total_bytes is null, not absent, when the size is unknown).
    out.update({k: v for k, v in data.items() if v is not None})
    if phase is not None:
        out.update(phase)  # download.total_bytes stays null when unknown
    return out


def encode_status(event: BaseModel) -> bytes:
    return json.dumps(status_to_dict(event), separators=(",", ":")).encode() + b"\n"


# ---- client-side decoding ------------------------------------------------------

class AdminEvent(BaseModel):
    """A permissive view of any admin frame, for clients.

    Unknown statuses and phases are kept verbatim and unknown keys are ignored, so a
    newer daemon never breaks an older subscriber.
    """

    model_config = ConfigDict(extra="ignore")

    id: str = ""
    kind: str = Field(default="", alias="type")
    status: str
    phase: str = ""
    path: str | None = None
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    source_url: str | None = None
    expected_sha256: str | None = None
    actual_sha256: str | None = None
    quarantine_path: str | None = None
    n_ctx: int | None = None
    backend: str | None = None
    v2: bool | None = None
    vision: bool | None = None
    audio: bool | None = None
    tools: bool | None = None
    thinking: bool | None = None
    embed: bool | None = None
    accelerator: str | None = None
    gpu_layers: int | None = None
    device_name: str | None = None
    vram_total_bytes: int | None = None
    model: str | None = None
    parallel: int | None = None
    flash_attn: bool | None = None
    n_threads: int | None = None
    n_threads_batch: int | None = None
    decode_cpus: list[int] | None = None
    frame_interval_ms: float | None = None
    amx: str | None = None
    amx_reason: str | None = None
    cpu_features: list[str] | None = None
    runner: dict[str, Any] | None = None
    version: str | None = None
    reload_error: str | None = None
    # backend_state (and a replayed capabilities frame of a backend that is not closed)
    state: str | None = None
    reason: str | None = None
    failures: int | None = None
    retry_in_ms: int | None = None
    # the waiting_remote load phase
    attempt: int | None = None
    # sequences (and a replayed capabilities frame of a backend that is decoding)
    sequences: list[dict[str, Any]] | None = None
    # model (issue 20)
    memory_bytes: int | None = None
    expires_at: float | None = None

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"


def parse_admin_event(line: bytes | str) -> AdminEvent:
    try:
        return AdminEvent.model_validate_json(line)
    except ValidationError as exc:
        raise DecodeError(str(exc.errors(include_url=False)[0].get("msg", "invalid"))) from None
