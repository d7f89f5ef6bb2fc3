"""A tiny checkpoint for command-line tests whose greedy answers never end by themselves (its
embedding is scaled so that it repeats its last token): an answer runs until it is stopped."""
import numpy as np


def never_ending_checkpoint(folder):
    from bitttt import BitLlama, BitLlamaConfig
    from bitttt.data import train_tokenizer
    from bitttt.formats import save_checkpoint
    from bitttt.optim import AdamW

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "red", "ball", "dog", "ran"]
    (folder / "t.txt").write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)), encoding="utf-8")
    tok = train_tokenizer([str(folder / "t.txt")], vocab_size=280)
    cfg = BitLlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         mini_batch_size=8)
    m = BitLlama(cfg)
    m.init_weights(0)
    m.params["embed.weight"] *= 40
    p = folder / "m.safetensors"
    save_checkpoint(p, params=m.params, optim=AdamW(m.params).state_tensors(), config=cfg, train={"seq_len": 64},
                    state={"step": 1, "optim_t": 0}, tokenizer=tok.to_bytes())
    return p
