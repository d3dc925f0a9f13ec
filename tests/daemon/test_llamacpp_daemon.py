"""The daemon serving the real Gemma 3 270M through llama.cpp (issue: real inference).

One in-process daemon for the module (`--backend llamacpp --llamacpp-embed --v2`),
spoken to over its real Unix sockets. The reference for greedy output is
llama-cpp-python's own `create_completion`, in this process. The model comes from the
`model_path` fixture (tests/conftest.py: marks these tests `model`, holds llama.cpp to
the CPU).
"""

from __future__ import annotations

import asyncio
import math

import pytest
import pytest_asyncio
from llama_cpp import Llama

from daemon_harness import (
    cleanup,
    decoded_when_idle,
    dial,
    line,
    read_json,
    read_until_terminal,
    roundtrip,
    short_tmpdir,
    start_daemon,
)

from inferd.engine.llamacpp.templates import GemmaRenderer
from inferd.engine.llamacpp.bridge import WorkerStream

pytestmark = pytest.mark.asyncio(loop_scope="module")

N_CTX = 1024
PROMPT = "Name three colours of the rainbow."


def chat(id: str, content: str = PROMPT, **extra) -> dict:
    body = {"id": id, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=N_CTX, n_threads=2,
                                llamacpp_embed=True, v2=True, v2_addr=str(d / "v2.sock"))
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


def reference_completion(model_path: str, *, flash_attn: bool, max_tokens: int = 24) -> tuple[list[int], dict]:
    """PROMPT's prompt tokens and llama-cpp-python's greedy completion of them, in this process."""
    prompt = GemmaRenderer().render([{"role": "user", "content": PROMPT}])
    ref = Llama(model_path, n_ctx=N_CTX, n_batch=512, n_threads=2, n_threads_batch=2, flash_attn=flash_attn,
                verbose=False)
    try:
        tokens = ref.tokenize(prompt.encode(), add_bos=False, special=True)
        return tokens, ref.create_completion(tokens, max_tokens=max_tokens, temperature=0.0)
    finally:
        ref.close()


async def test_greedy_equals_llama_cpp_python_in_process(daemon, model_path):
    frames = await roundtrip(daemon.infer, chat("g1", max_tokens=24, temperature=0), timeout=120)
    done = frames[-1]
    assert done["type"] == "done" and done["backend"] == "llamacpp"
    assert done["content"] == "".join(f["content"] for f in frames[:-1])
    # Configured like the daemon's context: llama.cpp's "auto" turns flash attention on for CPU.
    tokens, out = reference_completion(model_path, flash_attn=True)
    assert done["content"] == out["choices"][0]["text"]
    assert done["usage"]["prompt_tokens"] == len(tokens)
    assert done["usage"]["completion_tokens"] == out["usage"]["completion_tokens"]
    assert set(done["timings"]) == {"prompt_ms", "generate_ms", "tokens_per_second"}


async def test_flash_attn_off_reaches_llama_cpp(model_path):
    # `--flash-attn off` (config `flash_attn: false`): the backend says so, and its greedy
    # text is llama-cpp-python's with flash attention off.
    d = short_tmpdir()
    other = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=N_CTX, n_threads=2,
                               parallel=1, flash_attn=False)
    try:
        assert other.server.router.entries[0].caps.flash_attn is False
        done = (await roundtrip(other.infer, chat("fa0", max_tokens=24, temperature=0), timeout=120))[-1]
    finally:
        assert await other.stop(60) == 0
        cleanup(d)
    _, out = reference_completion(model_path, flash_attn=False)
    assert done["type"] == "done" and done["content"] == out["choices"][0]["text"]


async def test_max_tokens_gives_length(daemon):
    done = (await roundtrip(daemon.infer, chat("len", max_tokens=5, temperature=0), timeout=120))[-1]
    assert done["stop_reason"] == "length" and done["usage"]["completion_tokens"] == 5


async def test_stop_string_ends_generation_and_is_not_emitted(daemon):
    free = (await roundtrip(daemon.infer, chat("free", max_tokens=24, temperature=0), timeout=120))[-1]
    words = free["content"].split()
    assert len(words) >= 3, free["content"]
    stop = words[2]
    stopped = (await roundtrip(daemon.infer, chat("stop", max_tokens=24, temperature=0, stop=[stop]),
                               timeout=120))[-1]
    assert stopped["stop_reason"] == "end"
    assert stop not in stopped["content"]
    assert free["content"].startswith(stopped["content"])


async def test_same_seed_same_text(daemon):
    a = (await roundtrip(daemon.infer, chat("s1", max_tokens=16, temperature=1.0, seed=42), timeout=120))[-1]
    b = (await roundtrip(daemon.infer, chat("s2", max_tokens=16, temperature=1.0, seed=42), timeout=120))[-1]
    assert a["content"] == b["content"] and a["content"]


async def test_grammar_constrains_output(daemon):
    grammar = 'root ::= ("yes" | "no") "."'
    done = (await roundtrip(daemon.infer, chat("gr", "Is water wet?", max_tokens=8, grammar=grammar),
                            timeout=120))[-1]
    assert done["type"] == "done" and done["content"] in ("yes.", "no."), done


async def test_oversized_grammar_is_invalid_request(daemon):
    grammar = "root ::= " + " | ".join(['"a"'] * 5000)
    frames = await roundtrip(daemon.infer, chat("bigg", grammar=grammar), timeout=60)
    assert frames[0]["type"] == "error" and frames[0]["code"] == "invalid_request"


async def test_context_overflow_refused_before_decoding(daemon):
    reader, writer = await dial(daemon.infer)
    writer.write(line(chat("long", "word " * 3000)))
    err = await read_json(reader, timeout=60)
    assert err["type"] == "error" and err["id"] == "long" and err["code"] == "invalid_request"
    assert str(N_CTX) in err["message"]
    writer.write(line(chat("after", max_tokens=2)))  # the connection stays usable
    assert (await read_until_terminal(reader, timeout=120))[-1]["type"] == "done"
    writer.close()


@pytest_asyncio.fixture(loop_scope="module")
async def in_process(model_path):
    """The engine in the daemon's own process (`runner: false`), where its worker can be counted."""
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=N_CTX, n_threads=2,
                                parallel=1, runner=False)
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


async def test_client_leaving_mid_stream_stops_the_decode(in_process, monkeypatch):
    """The daemon closes the engine stream of a client that went away, and the worker
    decodes at most the token it was on: counted, not timed (in process; the runner's
    side of it is in test_runner_supervision)."""
    daemon = in_process
    backend = daemon.server.router.entries[0].backend
    closed, at_close, kept = asyncio.Event(), [], []
    real_aclose = WorkerStream.aclose

    async def aclose_and_count(stream: WorkerStream) -> None:
        await real_aclose(stream)
        at_close.append(backend._gen_state.decoded)
        kept.append(stream)  # alive: a dropped stream's __del__ would cancel it too
        closed.set()

    monkeypatch.setattr(WorkerStream, "aclose", aclose_and_count)
    reader, writer = await dial(daemon.infer)
    # Greedy, this base model does not stop by itself within 400 tokens.
    writer.write(line(chat("cancel", max_tokens=400, temperature=0)))
    for _ in range(2):
        assert (await read_json(reader, timeout=120))["type"] == "token"
    writer.close()
    await asyncio.wait_for(closed.wait(), 120)
    assert await decoded_when_idle(backend) - at_close[0] <= 1
    done = (await roundtrip(daemon.infer, chat("next", max_tokens=3), timeout=120))[-1]
    assert done["type"] == "done"
    assert daemon.server.router.outstanding == 0


async def test_second_turn_reuses_the_prompt_prefix(daemon):
    first = (await roundtrip(daemon.infer, chat("t1", "Tell me about the moon.", max_tokens=12, temperature=0),
                             timeout=120))[-1]
    turn2 = {"id": "t2", "max_tokens": 4, "temperature": 0, "messages": [
        {"role": "user", "content": "Tell me about the moon."},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": "And the sun?"}]}
    second = (await roundtrip(daemon.infer, turn2, timeout=120))[-1]
    assert second["type"] == "done"
    # Through the runner's channel: most of the prompt came from the cache.
    assert second["usage"]["cached_tokens"] > second["usage"]["prompt_tokens"] // 2


async def test_embeddings_are_unit_norm_and_meaningful(daemon):
    frames = await roundtrip(daemon.embed, {"id": "e", "input": [
        "A cat sat on the mat.", "A kitten rested on the rug.", "Quarterly tax filing deadlines."]}, timeout=120)
    emb = frames[0]
    assert emb["type"] == "embeddings" and emb["backend"] == "llamacpp" and emb["usage"]["input_tokens"] > 0
    vecs = emb["embeddings"]
    for v in vecs:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-3)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    small = (await roundtrip(daemon.embed, {"id": "d", "input": ["x"], "dimensions": 64}, timeout=60))[0]
    assert small["dimensions"] == 64 and math.isclose(math.sqrt(sum(x * x for x in small["embeddings"][0])), 1.0,
                                                      rel_tol=1e-3)


async def test_v2_text_request_on_llamacpp(daemon):
    v2 = str(daemon.dir / "v2.sock")
    body = {"id": "v2", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}
    frames = await roundtrip(v2, body, timeout=120)
    done = frames[-1]
    assert done["type"] == "done" and done["stop_reason"] == "max_tokens" and done["usage"]["output_tokens"] == 6
    assert all(f["type"] == "frame" and f["block"]["type"] == "text" for f in frames[:-1])
    image = {"id": "img", "messages": [{"role": "user", "content": [{"type": "image", "attachment_id": "i"}]}],
             "attachments": [{"kind": "image", "id": "i", "width": 1, "height": 1, "bytes": "AAAA"}]}
    err = (await roundtrip(v2, image, timeout=60))[-1]
    assert err["type"] == "error" and err["code"] == "attachment_unsupported"


async def test_admin_capabilities_describe_the_model(daemon):
    reader, writer = await dial(daemon.admin)
    caps = await read_json(reader)
    writer.close()
    assert caps["status"] == "capabilities" and caps["backend"] == "llamacpp"
    assert caps["model"] == "Gemma 3 270m" and caps["n_ctx"] == N_CTX and caps["embed"] is True
    # model_path holds llama.cpp to the CPU, GPU build or not.
    assert caps["v2"] is True and caps["accelerator"] == "cpu" and caps["gpu_layers"] == 0
    # Left to llama.cpp's "auto", which turns flash attention on for the CPU: the frame
    # says what llama.cpp chose, not what was asked.
    assert caps["flash_attn"] is True
