"""The one fault table (daemon/surfaces/faults.py): every kind has a name on every wire."""

from __future__ import annotations

from inferd.daemon.surfaces.faults import EMBED_CODES, FAULTS, V1_CODES, V2_CODES
from inferd.daemon.surfaces.http.errors import HttpError
from inferd.engine.backend import Fault
from inferd.proto.errors import EmbedErrorCode, ErrorCode
from inferd.proto.v2 import ErrorCodeV2


def test_every_fault_kind_has_a_row() -> None:
    assert set(FAULTS) == set(Fault)


def test_each_wire_names_a_kind_only_with_its_own_codes() -> None:
    """v1's code set is closed (upstream): a kind it has no code for folds into one it has."""
    assert set(V1_CODES.values()) <= set(ErrorCode)
    assert set(V2_CODES.values()) <= set(ErrorCodeV2)
    assert set(EMBED_CODES.values()) <= set(EmbedErrorCode)


def test_kinds_v1_cannot_name_are_named_on_v2_and_http() -> None:
    assert V1_CODES[Fault.ATTACHMENT_UNSUPPORTED] == "invalid_request"
    assert V2_CODES[Fault.ATTACHMENT_UNSUPPORTED] == "attachment_unsupported"
    assert V1_CODES[Fault.TOOL_CALL_MALFORMED] == "backend_unavailable"
    assert V2_CODES[Fault.TOOL_CALL_MALFORMED] == "tool_call_malformed"
    assert EMBED_CODES[Fault.UNSUPPORTED] == "embed_unsupported"


def test_http_answers_a_fault_with_its_row() -> None:
    for kind, wire in FAULTS.items():
        err = HttpError.from_fault(kind, "why")
        assert (err.status, err.type, err.code, err.message) == (wire.http_status, wire.http_type, wire.http_code,
                                                                  "why")
    full = HttpError.from_fault(Fault.QUEUE_FULL, "busy")
    assert full.status == 429 and (b"retry-after", b"1") in full.headers
    assert HttpError.from_fault(Fault.TOOL_CALL_MALFORMED, "x").status == 502


def test_ollama_answers_a_fault_with_its_row_in_its_own_shape() -> None:
    from inferd.daemon.surfaces.http.ollama_encode import OllamaError

    for kind, wire in FAULTS.items():
        err = OllamaError.of(HttpError.from_fault(kind, "why"))
        assert err.status == (wire.ollama_status or wire.http_status) and err.body() == {"error": "why"}
    assert OllamaError.of(HttpError.from_fault(Fault.QUEUE_FULL, "busy")).status == 503  # Ollama's "server busy"
