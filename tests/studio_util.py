"""Shared by the Studio tests: a small corpus made here, and the form of a tiny run."""
import os
import random

WORDS = ("the a little cat dog bird sun moon tree river house garden ran jumped sang looked found saw "
         "happy small big red green blue old new and then but so very quietly today home friend "
         "played with under over near far away Tom Lily Sam Mia said asked").split()


def corpus(n_sentences: int = 160, seed: int = 0) -> str:
    """A few KB of plain ASCII sentences, documents separated by <|endoftext|>."""
    rng = random.Random(seed)
    docs = []
    for _ in range(8):
        sents = []
        for _ in range(n_sentences // 8):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
            sents.append(" ".join(words).capitalize() + rng.choice(".!?"))
        docs.append(" ".join(sents))
    return "\n<|endoftext|>\n".join(docs) + "\n"


VOCAB = 320


def tiny_fields(**over) -> dict:
    """Training fields of a D=32 model that trains in a second or two."""
    f = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
         "batch_size": 2, "seq_len": 32, "max_steps": 30, "max_time": 60.0, "warmup_steps": 2, "log_interval": 2,
         "eval_interval": 10, "eval_batches": 1, "ckpt_interval": 10, "sample_tokens": 0}
    f.update(over)
    return f


def listing(path: str) -> list:
    """Every file and folder under `path` (hidden ones too), relative."""
    out = []
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(root, n), path))
    return sorted(out)
