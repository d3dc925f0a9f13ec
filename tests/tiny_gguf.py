"""A tiny random-weight Gemma 3 GGUF (about 40 MB) for tests that need more than one
real model (issue 20): llama.cpp loads and decodes it like any GGUF, its text is noise.

It borrows the embedded Gemma 3 270M's tokenizer, so both models read prompts alike;
everything else (4 layers, width 64, one KV head) is drawn from a fixed seed, so the
same file comes out every time. Needs the `gguf` package (the test extra) and numpy.
"""

from __future__ import annotations

from pathlib import Path

WIDTH, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 4, 2, 1, 32, 128


def write_tiny_gguf(out: Path, tokenizer_from: str | Path, name: str = "tiny random gemma3") -> Path:
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    fields = GGUFReader(str(tokenizer_from)).fields

    def strings(key: str) -> list[str]:
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]

    def numbers(key: str, kind: type) -> list:
        f = fields[key]
        return [kind(f.parts[i][0]) for i in f.data]

    tmp = out.with_name(out.name + ".part")
    w = GGUFWriter(str(tmp), "gemma3")
    w.add_name(name)
    w.add_context_length(4096)
    w.add_embedding_length(WIDTH)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(512)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(strings("tokenizer.ggml.tokens"))
    w.add_token_scores(numbers("tokenizer.ggml.scores", float))
    w.add_token_types(numbers("tokenizer.ggml.token_type", int))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)

    rng = np.random.default_rng(20)
    n_vocab = len(fields["tokenizer.ggml.tokens"].data)

    def noise(tensor: str, *shape: int, dtype: type = np.float32) -> None:
        w.add_tensor(tensor, (rng.standard_normal(shape) * 0.05).astype(dtype))

    def ones(tensor: str, size: int) -> None:
        w.add_tensor(tensor, np.ones(size, np.float32))

    noise("token_embd.weight", n_vocab, WIDTH, dtype=np.float16)
    ones("output_norm.weight", WIDTH)
    for layer in range(LAYERS):
        blk = f"blk.{layer}."
        noise(blk + "attn_q.weight", HEADS * HEAD_DIM, WIDTH)
        noise(blk + "attn_k.weight", KV_HEADS * HEAD_DIM, WIDTH)
        noise(blk + "attn_v.weight", KV_HEADS * HEAD_DIM, WIDTH)
        noise(blk + "attn_output.weight", WIDTH, HEADS * HEAD_DIM)
        ones(blk + "attn_q_norm.weight", HEAD_DIM)
        ones(blk + "attn_k_norm.weight", HEAD_DIM)
        for norm in ("attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"):
            ones(blk + norm + ".weight", WIDTH)
        noise(blk + "ffn_gate.weight", FFN, WIDTH)
        noise(blk + "ffn_up.weight", FFN, WIDTH)
        noise(blk + "ffn_down.weight", WIDTH, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)  # whole or absent: a test never sees half a file
    return out
