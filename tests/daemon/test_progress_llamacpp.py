"""Progress (issue 22) and fairness between apps (F-21) on the real model.

One daemon for the module: the real Gemma 3 270M in its runner process (the default,
so PromptProgress crosses the runner channel), one slot, a queue of 3 and 64-token
batches, so a prompt of a few hundred tokens is read in several chunks. A request
holds the slot with a grammar that never lets the model stop (`root ::= "a" root`)
until the test closes its connection, which cancels it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
import pytest_asyncio

from daemon_harness import (RecordingActivityLog, cleanup, dial, line, read_json, read_until_terminal, short_tmpdir,
                            req, start_daemon, wait_until)

pytestmark = pytest.mark.asyncio(loop_scope="module")

N_CTX = 1024
N_BATCH = 64
QUEUE = 3
#: Never lets the model end: the holder runs until its client leaves (or the context is full).
ENDLESS = 'root ::= "a" root'


def chat(id: str, content: str = "Say hi.", **extra: Any) -> dict[str, Any]:
    """A greedy chat request of at most 4 tokens (daemon_harness.req)."""
    return req(id, content, **{"temperature": 0, "max_tokens": 4, **extra})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    config = d / "config.json"
    config.write_text(json.dumps({"backends": [{
        "kind": "llamacpp", "name": "local", "model_path": model_path, "n_ctx": N_CTX, "n_threads": 2,
        "parallel": 1, "n_batch": N_BATCH}]}))
    activity = RecordingActivityLog()
    daemon = await start_daemon(d, config=str(config), queue_depth=QUEUE, activity=activity)
    daemon.activity = activity  # type: ignore[attr-defined]
    yield daemon
    for writer in _open:
        writer.close()
    assert await daemon.stop(60) == 0
    activity.close()
    cleanup(d)


async def holding(daemon: Any, id: str = "holder") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request that holds the one slot until its connection is closed."""
    reader, writer = await dial(daemon.infer)
    writer.write(line(chat(id, grammar=ENDLESS, max_tokens=N_CTX)))
    assert (await read_json(reader, 120))["type"] == "token"  # it runs: the slot is taken
    return reader, writer


async def test_long_prompt_reports_prefill_chunks_then_context(daemon):
    content = " ".join(f"word{i}" for i in range(150))
    reader, writer = await dial(daemon.infer)
    writer.write(line(chat("long", content, progress=True)))
    frames = await read_until_terminal(reader, 120)
    writer.close()
    prefill = [f for f in frames if f.get("stage") == "prefill"]
    total = frames[-1]["usage"]["prompt_tokens"]
    assert total > 3 * N_BATCH
    assert all(f["total"] == total for f in prefill)
    done = [f["done"] for f in prefill]
    assert done == sorted(set(done)) and done[-1] == total  # strictly increasing, ending at total
    assert len(done) >= 4  # reading starts, then one report per 64-token chunk
    assert all(b - a <= N_BATCH for a, b in zip(done, done[1:]))
    i = frames.index(prefill[-1])
    assert frames[i + 1] == {"type": "progress", "id": "long", "stage": "context",
                             "context": {"used": total, "max": N_CTX}}
    assert {f["type"] for f in frames[i + 2:-1]} <= {"token"} and frames[-1]["type"] == "done"
    assert frames[-1]["usage"]["completion_tokens"] >= 1

    # The same request without the flag: not one progress frame.
    plain = await read_until_terminal(await _send(daemon, chat("long-plain", content)), 120)
    assert not [f for f in plain if f["type"] == "progress"]


_open: list[asyncio.StreamWriter] = []  # kept open until the module ends


async def _send(daemon: Any, body: dict[str, Any]) -> asyncio.StreamReader:
    reader, writer = await dial(daemon.infer)
    writer.write(line(body))
    _open.append(writer)
    return reader


async def test_queued_request_hears_its_place_then_gets_its_tokens(daemon):
    gate = daemon.server.router.entries[0].admission
    holder_reader, holder_writer = await holding(daemon)
    a = await _send(daemon, chat("a", progress=True))
    assert await read_json(a, 60) == {"type": "progress", "id": "a", "stage": "queued", "position": 1}
    b = await _send(daemon, chat("b", progress=True))
    assert await read_json(b, 60) == {"type": "progress", "id": "b", "stage": "queued", "position": 2}
    assert (gate.running, gate.waiting) == (1, 2)
    holder_writer.close()  # the holder's client leaves: its generation is cancelled, "a" runs
    a_frames = await read_until_terminal(a, 120)
    assert [f["stage"] for f in a_frames if f["type"] == "progress"][0] == "prefill"
    assert a_frames[-1]["type"] == "done" and any(f["type"] == "token" for f in a_frames)
    b_frames = await read_until_terminal(b, 120)
    # "b" moved up to first in line once "a" had the slot.
    assert b_frames[0] == {"type": "progress", "id": "b", "stage": "queued", "position": 1}
    assert b_frames[-1]["type"] == "done"
    await wait_until(lambda: gate.outstanding == 0, 60, "all released")


#: A second app: another process (its own pid, so its own peer identity), raw NDJSON.
OTHER_APP = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\\n")
f = s.makefile("rb")
for raw in f:
    print(raw.decode().strip(), flush=True)
    if json.loads(raw)["type"] in ("done", "error"):
        break
"""


async def test_a_second_app_gets_the_slot_and_a_queue_place_while_the_first_holds_many(daemon):
    gate = daemon.server.router.entries[0].admission
    records = daemon.activity.records
    before = len(records)
    holder_reader, holder_writer = await holding(daemon, "hog-0")
    hog = [await _send(daemon, chat(f"hog-{i}")) for i in range(1, QUEUE + 1)]
    await wait_until(lambda: gate.waiting == QUEUE, 60, "the hog fills the queue")
    late = await _send(daemon, chat("hog-late"))
    assert (await read_json(late, 60))["code"] == "queue_full"  # one app alone: the queue is full

    other = await asyncio.create_subprocess_exec(sys.executable, "-c", OTHER_APP, daemon.infer,
                                                 json.dumps(chat("other")), stdout=asyncio.subprocess.PIPE)
    # F-21: the other app takes the hog's newest place, which ends with queue_full...
    newest = await read_until_terminal(hog[-1], 60)
    assert [f["code"] for f in newest] == ["queue_full"]
    await wait_until(lambda: gate.waiting == QUEUE, 60, "the other app waits in line")
    holder_writer.close()  # ...and is served the moment the slot frees, before the hog's backlog
    out, _ = await asyncio.wait_for(other.communicate(), 120)
    frames = [json.loads(x) for x in out.decode().splitlines()]
    assert frames[-1]["type"] == "done" and frames[-1]["id"] == "other"
    for reader in hog[:-1]:
        assert (await read_until_terminal(reader, 120))[-1]["type"] == "done"
    served = [r["req_id"] for r in records[before:] if r["msg"] == "request_done"]
    assert served == ["other", *(f"hog-{i}" for i in range(1, QUEUE))]
    await wait_until(lambda: gate.outstanding == 0, 60, "all released")
    assert (gate.running, gate.waiting) == (0, 0)
