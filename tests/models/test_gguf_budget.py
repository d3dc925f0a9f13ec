"""The GGUF header reader and the memory estimate built on it (issue 20, ADR 0034),
checked against the `gguf` package's own reader and llama.cpp's own buffer sizes."""

from __future__ import annotations

import re
import struct

import pytest

from inferd.daemon.models.budget import GiB, MiB, default_budget, estimate, parse_budget
from inferd.engine.llamacpp.settings import LlamaCppOptions
from inferd.models.gguf import GGUFError, read_gguf


def test_the_header_agrees_with_the_gguf_package(tiny_gguf, model_path):
    from gguf import GGUFReader

    for path in (tiny_gguf, model_path):
        ours, theirs = read_gguf(path), GGUFReader(path)
        arch = ours.arch
        for key in ("block_count", "attention.head_count_kv", "attention.key_length", "embedding_length"):
            field = theirs.fields[f"{arch}.{key}"]
            assert ours.arch_int(key) == int(field.parts[field.data[0]][0])
        assert ours.n_vocab == len(theirs.fields["tokenizer.ggml.tokens"].data)
        assert ours.tensor_bytes == sum(int(t.n_bytes) for t in theirs.tensors)


def test_a_file_that_is_not_gguf_or_is_cut_short_is_a_clear_error(tmp_path, tiny_gguf):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(bad)
    bad.write_bytes(open(tiny_gguf, "rb").read(4096))
    with pytest.raises(GGUFError, match="ends inside its header"):
        read_gguf(bad)
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0))
    with pytest.raises(GGUFError, match="implausible"):
        read_gguf(bad)


def test_the_estimate_matches_llama_cpps_own_buffers(tiny_gguf, caplog):
    import logging

    import llama_cpp

    # The engine routes llama.cpp's log lines to this logger (engine/llamacpp/native.py).
    with caplog.at_level(logging.DEBUG, logger="inferd.engine.llamacpp.native"):
        model = llama_cpp.Llama(tiny_gguf, n_ctx=2048, n_batch=512, n_threads=1, verbose=True)
    log = "".join(r.getMessage() for r in caplog.records)
    del model
    kv = sum(float(x) for x in re.findall(r"KV buffer size\s*=\s*([\d.]+) MiB", log)) * MiB
    compute = float(re.findall(r"compute buffer size\s*=\s*([\d.]+) MiB", log)[0]) * MiB
    ours = estimate(read_gguf(tiny_gguf), LlamaCppOptions(n_ctx=2048, parallel=1, n_batch=512))
    assert kv > 0 and abs(ours.kv - kv) <= kv * 0.05
    assert abs(ours.compute - compute) <= compute * 0.05


def test_budget_values():
    assert parse_budget("12GiB") == 12 * GiB
    assert parse_budget("8 GB") == 8 * 10**9
    assert parse_budget("50%", ram=16 * GiB) == 8 * GiB
    assert parse_budget(1234) == 1234
    assert default_budget(16 * GiB) == 12 * GiB  # a quarter left for the machine
    assert default_budget(4 * GiB) == 2 * GiB  # at least 2 GiB left, never under half
    for bad in ("lots", "0%", "150%", -1, True):
        with pytest.raises(ValueError, match="memory_budget"):
            parse_budget(bad)
