"""A llama.cpp model of the bench_decode shape with random weights, for a same-machine comparison.

    PYTHONPATH=<llama.cpp>/gguf-py python bench/make_gguf.py /tmp/rand-f16.gguf
    <llama.cpp>/build/bin/llama-quantize --token-embedding-type f16 --output-tensor-type q8_0 \\
        /tmp/rand-f16.gguf /tmp/rand-tq2_0.gguf TQ2_0
    python bench/bench_decode.py --llama-bench <llama.cpp>/build/bin/llama-bench --gguf /tmp/rand-tq2_0.gguf

Shape: llama architecture, vocab 32000, hidden 2048, 8 layers, 16 heads (16 KV heads), FFN 5632,
float16 weights drawn from N(0, 0.02) (TQ2_0 quantization makes the linear layers ternary), a
dummy SentencePiece-style vocabulary (the benchmark never tokenizes text).  Needs the `gguf`
package of llama.cpp (its gguf-py folder, or `pip install gguf`).
"""
from __future__ import annotations

import numpy as np

V, D, L, H, FF = 32000, 2048, 8, 16, 5632


def main(out: str) -> None:
    import gguf

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("bitttt-bench-random")
    w.add_context_length(2048)
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(H)
    w.add_rope_dimension_count(D // H)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(V)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, byte
    tokens += [f"\u2581t{i}" for i in range(V - len(tokens))]
    types += [1] * (V - len(types))  # normal
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(V - 259)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def rand(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", rand(V, D))
    for i in range(L):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(D, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", rand(D, D))
        w.add_tensor(p + "ffn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(FF, D))
        w.add_tensor(p + "ffn_up.weight", rand(FF, D))
        w.add_tensor(p + "ffn_down.weight", rand(D, FF))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    w.add_tensor("output.weight", rand(V, D))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the .gguf file to write (float16 weights, about 1 GiB)")
    main(ap.parse_args().out)
