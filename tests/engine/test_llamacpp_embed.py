"""LlamaCppBackend embeddings with the real Gemma 3 270M model (mean pooling).

The backends come from tests/engine/conftest.py through `model_path`, which marks every
test here `model`."""

from __future__ import annotations

import math

import pytest

from inferd.engine.backend import BackendInvalidRequest, Unsupported
from inferd.engine.llamacpp.embed import TASK_PREFIX
from inferd.proto.embed import EmbedResolved, EmbedTask


def emb(input, **kw) -> EmbedResolved:
    return EmbedResolved(id="e", input=input, **kw)


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


async def test_capabilities_and_default_vectors(embed_backend):
    caps = embed_backend.capabilities()
    assert caps.embed is True and caps.model == "Gemma 3 270m"
    r = await embed_backend.embed(emb(["hello world", "the sea is calm"]))
    assert r.model == "Gemma 3 270m"
    assert r.dimensions == embed_backend.n_embd == 640
    assert len(r.embeddings) == 2 and all(len(v) == 640 for v in r.embeddings)
    assert all(abs(norm(v) - 1.0) < 1e-3 for v in r.embeddings)
    assert r.embeddings[0] != r.embeddings[1]


async def test_input_tokens_are_summed(embed_backend):
    one = await embed_backend.embed(emb(["hello world"]))
    two = await embed_backend.embed(emb(["hello world", "hello world"]))
    assert two.input_tokens == 2 * one.input_tokens > 0
    # The same text twice, in one pass: the same direction, to the tolerance that
    # llama.cpp's batch-shape-dependent CPU kernels allow (ADR 0018; the repacked
    # kernels round a row by its place in the batch).
    for a, b in ((two.embeddings[0], two.embeddings[1]), (one.embeddings[0], two.embeddings[0])):
        assert sum(x * y for x, y in zip(a, b)) > 0.998


async def test_dimensions_truncate_then_renormalise(embed_backend):
    full = (await embed_backend.embed(emb(["a lighthouse on a rocky coast"]))).embeddings[0]
    short = await embed_backend.embed(emb(["a lighthouse on a rocky coast"], dimensions=64))
    assert short.dimensions == 64 and len(short.embeddings[0]) == 64
    assert abs(norm(short.embeddings[0]) - 1.0) < 1e-3
    head = full[:64]
    assert short.embeddings[0] == pytest.approx([x / norm(head) for x in head], abs=1e-4)


async def test_similar_texts_are_closer_than_unrelated(embed_backend):
    r = await embed_backend.embed(emb([
        "The cat sat on the mat.",
        "A cat was sitting on the mat.",
        "Quarterly revenue rose five percent.",
    ]))
    a, b, c = r.embeddings
    assert cos(a, b) > cos(a, c) + 0.1
    assert cos(a, b) > cos(b, c) + 0.1


async def test_task_prefix_changes_vector_and_token_count(embed_backend):
    plain = await embed_backend.embed(emb(["tides and currents"]))
    for task in EmbedTask:
        r = await embed_backend.embed(emb(["tides and currents"], task=task))
        assert r.input_tokens > plain.input_tokens, task
        assert r.embeddings[0] != plain.embeddings[0], task
    assert TASK_PREFIX[EmbedTask.RETRIEVAL_DOCUMENT] == "title: none | text: "


async def test_dimensions_above_n_embd_refused(embed_backend):
    with pytest.raises(BackendInvalidRequest, match=r"^dimensions 99999 exceeds model n_embd 640$"):
        await embed_backend.embed(emb(["x"], dimensions=99999))


async def test_too_long_input_refused_before_any_work(embed_backend):
    with pytest.raises(BackendInvalidRequest,
                       match=r"^input exceeds embed context: \d+ tokens > n_ubatch 256$"):
        await embed_backend.embed(emb(["short", "wave " * 400]))
    # The worker is still serving.
    r = await embed_backend.embed(emb(["short"]))
    assert len(r.embeddings) == 1


async def test_generation_backend_without_embed_refuses(backend):
    assert backend.capabilities().embed is False
    with pytest.raises(Unsupported):
        await backend.embed(emb(["x"]))
