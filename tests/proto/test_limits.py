"""What one request may multiply (proto/limits.py; issue 8, THREAT_MODEL F-1, F-11), and the
frame cap on replies, checked over real sockets against a daemon in this process.

Each test says how the code before issue 8 (8da2fcd) failed it.
"""

from __future__ import annotations

from typing import Any

import pytest

from daemon_harness import dial, line, read_until_terminal, req

from inferd.daemon.observe.activity import LOG_FILE_NAME, ActivityLog
from inferd.engine.mock import MockBackend
from inferd.proto import limits, v1
from inferd.proto.framing import MAX_FRAME_BYTES


async def test_request_id_over_256_bytes_is_refused_and_never_echoed(daemon_factory, sockdir):
    """Item 1/5: an id over MAX_ID_BYTES (256 UTF-8 bytes) is refused with invalid_request
    naming the limit, on id "" (it is never echoed, nor logged), and the connection stays
    open; 256 bytes are fine. A 40 MiB id costs a parse, nothing more. Old code: echoed
    in every frame and written to the log whole."""
    logs = sockdir / "logs"
    d = await daemon_factory(mock={"tokens": ["ok"]}, activity=ActivityLog(logs, level="info"))
    reader, writer = await dial(d.infer)
    try:
        for rid in ("a" * 257, "é" * 129, "x" * (40 << 20)):
            writer.write(line(req(rid)))
            (frame,) = await read_until_terminal(reader, 30)
            assert frame["type"] == "error" and frame["id"] == "" and frame["code"] == "invalid_request"
            assert "256" in frame["message"] and "MAX_ID_BYTES" in frame["message"]
        for rid in ("b" * 256, "é" * 128):
            writer.write(line(req(rid)))
            frames = await read_until_terminal(reader)
            assert frames[-1]["type"] == "done" and frames[-1]["id"] == rid
    finally:
        writer.close()
    assert (logs / LOG_FILE_NAME).stat().st_size < 64 * 1024


def _image(att_id: str) -> dict[str, Any]:
    return {"kind": "image", "id": att_id, "width": 1, "height": 1, "bytes": "AAAA"}


def _v2(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "v2", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    body.update(extra)
    return body


def _tool(name: str, schema: Any = None) -> dict[str, Any]:
    return {"name": name, "description": "d", "input_schema": schema or {"type": "object"}}


BIG_SCHEMA = {"type": "object", "description": "s" * limits.MAX_SCHEMA_BYTES}
LIMIT_CASES = [
    # (surface, request over the limit, the limit's name, the same request at the limit)
    ("v1", req("m", messages=[{"role": "user", "content": "a"}] * 4097), "MAX_MESSAGES",
     req("m", messages=[{"role": "user", "content": "a"}] * 4096)),
    ("v1", req("s", stop=[f"s{i}" for i in range(17)]), "MAX_STOP_STRINGS", req("s", stop=[f"s{i}" for i in range(16)])),
    ("v1", req("b", stop=["é" * 129]), "MAX_STOP_BYTES", req("b", stop=["é" * 128])),
    ("v1", req("g", grammar="x" * 65537), "MAX_GRAMMAR_BYTES", None),
    ("v1", req("r", response_format={"type": "json_schema", "schema": BIG_SCHEMA}), "MAX_SCHEMA_BYTES", None),
    ("v2", _v2(tools=[_tool(f"t{i}") for i in range(129)]), "MAX_TOOLS", _v2(tools=[_tool(f"t{i}") for i in range(128)])),
    ("v2", _v2(tools=[_tool("big", BIG_SCHEMA)]), "MAX_SCHEMA_BYTES", None),
    ("v2", _v2(attachments=[_image(f"a{i}") for i in range(101)]), "MAX_ATTACHMENTS",
     _v2(attachments=[_image(f"a{i}") for i in range(100)])),
    ("v2", _v2(stop=["x"] * 17), "MAX_STOP_STRINGS", None),
    ("embed", {"id": "e", "input": ["x"] * 2048, "dimensions": 4096}, "MAX_EMBED_VALUES",
     {"id": "e", "input": ["x"] * 2, "dimensions": 4096}),
]


@pytest.fixture
async def three_surfaces(daemon_factory, sockdir):
    return await daemon_factory(mock={"tokens": ["ok"]}, v2=True, v2_addr=str(sockdir / "v2.sock"))


@pytest.mark.parametrize(("surface", "over", "name", "at"), LIMIT_CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(LIMIT_CASES)])
async def test_each_limit_is_refused_by_name_and_the_connection_stays_open(
        three_surfaces, monkeypatch, surface, over, name, at):
    """Item 5/6: every limit of proto/limits.py is an invalid_request naming it, on the
    request's id, before any backend work; the connection stays open. Old code: none of
    these limits existed (the embed one computed 8M floats, then crashed the handler)."""
    d = three_surfaces
    path = {"v1": d.infer, "v2": str(d.dir / "v2.sock"), "embed": d.embed}[surface]
    embedded: list[int] = []
    real_embed = MockBackend.embed

    async def spy(self: MockBackend, request: Any) -> Any:
        embedded.append(len(request.input))
        return await real_embed(self, request)

    monkeypatch.setattr(MockBackend, "embed", spy)
    reader, writer = await dial(path, limit=16 << 20)
    try:
        writer.write(line(over))
        (frame,) = await read_until_terminal(reader, 30)
        assert frame["type"] == "error" and frame["code"] == "invalid_request" and frame["id"] == over["id"]
        assert name in frame["message"], frame
        assert embedded == []
        follow = at or ({"id": "after", "input": ["x"]} if surface == "embed" else
                        _v2() if surface == "v2" else req("after"))
        writer.write(line(follow))
        frames = await read_until_terminal(reader, 30)
        assert frames[-1]["type"] in ("done", "embeddings"), frames[-1]
    finally:
        writer.close()


async def test_a_line_of_two_million_messages_is_refused_before_it_is_parsed(daemon_factory, monkeypatch):
    """Item 5: a 64 MiB line of one-letter messages parsed for ~17 s with every client
    stalled (bench/stall.py). It is refused before the parser sees it: MAX_JSON_VALUES,
    id "" (unknown), connection open. The parser spy proves the order. Old code: parsed,
    then served two million messages."""
    d = await daemon_factory(mock={"tokens": ["ok"]})
    parsed: list[int] = []
    real = v1.Request.model_validate_json

    def spy(data: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(v1.Request, "model_validate_json", spy)
    one = b'{"role":"user","content":"a"},'
    n = (MAX_FRAME_BYTES - 1024) // len(one)
    big = b'{"id":"big","messages":[' + one * (n - 1) + one[:-1] + b"]}\n"
    assert len(big) < MAX_FRAME_BYTES
    reader, writer = await dial(d.infer)
    try:
        writer.write(big)
        small = line(req("after"))
        writer.write(small)
        (frame,) = await read_until_terminal(reader, 60)
        assert frame == {"type": "error", "id": "", "code": "invalid_request", "message": frame["message"]}
        assert "MAX_JSON_VALUES" in frame["message"]
        frames = await read_until_terminal(reader, 30)
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "after"
    finally:
        writer.close()
    assert parsed == [len(small) - 1]


async def test_a_reply_over_the_frame_cap_ends_with_an_error_frame(daemon_factory):
    """Item 6: a `done` frame that would exceed 64 MiB (65 one-MiB tokens, stream false)
    made encode_frame raise: EOF, no error frame, a traceback. Now the request ends with
    frame_too_large on its id and the connection serves the next request."""
    d = await daemon_factory(mock={"tokens": ["x" * (1 << 20)] * 65})
    reader, writer = await dial(d.infer, limit=4 << 20)
    try:
        writer.write(line(req("huge", stream=False)))
        (frame,) = await read_until_terminal(reader, 60)
        assert frame["type"] == "error" and frame["id"] == "huge" and frame["code"] == "frame_too_large"
        assert str(MAX_FRAME_BYTES) in frame["message"]
        writer.write(line(req("small", stream=False, max_tokens=1)))
        (done,) = await read_until_terminal(reader, 60)
        assert done["type"] == "done" and done["id"] == "small" and len(done["content"]) == 1 << 20
    finally:
        writer.close()
    assert d.server.router.outstanding == 0
