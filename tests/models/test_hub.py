"""`hf.co/OWNER/REPO:QUANT` references and the choice of file (issue 20)."""

from __future__ import annotations

import pytest

from inferd.models.hub import choose, entry_name, parse_ref, resolve
from inferd.models.spec import StoreError

FILES = {"Qwen2.5-0.5B-Instruct-Q4_K_M.gguf": ("a" * 64, 10), "Qwen2.5-0.5B-Instruct-Q4_K_S.gguf": ("b" * 64, 9),
         "qwen2.5-0.5b-instruct-q8_0.gguf": ("c" * 64, 20), "mmproj-Q4_K_M.gguf": ("d" * 64, 1), "README.md": (None, 1)}


def test_references_parse_as_ollama_writes_them():
    ref = parse_ref("hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M")
    assert (ref.owner, ref.repo, ref.quant) == ("Qwen", "Qwen2.5-0.5B-Instruct-GGUF", "Q4_K_M")
    assert parse_ref("https://huggingface.co/acme/x").quant is None
    assert entry_name(ref, "Q4_K_M") == "qwen2.5-0.5b-instruct:q4_k_m"
    for bad in ("qwen2.5:0.5b", "hf.co/onlyowner", "hf.co/a/b/c", "http://evil.example/a/b"):
        with pytest.raises(ValueError, match="not a Hugging Face reference"):
            parse_ref(bad)


def test_the_quant_tag_picks_one_file_exactly():
    assert choose(FILES, parse_ref("hf.co/Qwen/R:Q4_K_M")) == ("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "Q4_K_M")
    assert choose(FILES, parse_ref("hf.co/Qwen/R:q8_0"))[0] == "qwen2.5-0.5b-instruct-q8_0.gguf"
    assert choose(FILES, parse_ref("hf.co/Qwen/R"))[1] == "Q4_K_M"  # Ollama's default
    with pytest.raises(StoreError, match="no GGUF file for Q2_K; it has: Q4_K_M, Q4_K_S, Q8_0"):
        choose(FILES, parse_ref("hf.co/Qwen/R:Q2_K"))
    split = {"m-Q4_K_M-00001-of-00002.gguf": ("e" * 64, 1), "m-Q4_K_M-00002-of-00002.gguf": ("f" * 64, 1)}
    with pytest.raises(StoreError, match="split in parts"):
        choose(split, parse_ref("hf.co/a/b:Q4_K_M"))


def test_plain_http_is_refused_except_on_loopback():
    with pytest.raises(StoreError, match="refusing model source http://mirror.example: use https://"):
        resolve(parse_ref("hf.co/a/b:Q4_K_M"), endpoint="http://mirror.example")
