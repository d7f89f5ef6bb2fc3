"""Small real files of every kind bitttt reads, and a helper that rewrites a file's header the way
an attacker would (checksums recomputed, so that only the semantic checks stand in the way).
Shared by tests/test_hostile.py and tests/test_fuzz.py."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from bitttt import BitLlama, BitLlamaConfig, PackedTernary
from bitttt.formats import save_checkpoint, write_model_file, write_packed
from bitttt.formats.safetensors import meta_crc32
from bitttt.optim import AdamW

CFG = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48, mini_batch_size=4)


def tiny_model(seed: int = 0) -> BitLlama:
    m = BitLlama(BitLlamaConfig(**CFG))
    m.init_weights(seed)
    return m


def tokenizer_bytes(tmp: Path):
    from bitttt.data import train_tokenizer

    words = ["the", "cat", "sat", "on", "a", "mat", "café", "naïve", "über", "日本", "語", "red", "ball"]
    rng = np.random.default_rng(0)
    (tmp / "t.txt").write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)), encoding="utf-8")
    return train_tokenizer([str(tmp / "t.txt")], vocab_size=300)


def make_files(tmp: Path, tok) -> dict[str, Path]:
    """One intact file of each kind: checkpoint, model (packed model file), memory, packed; and the
    model and the packed matrix again in the 1.6-bit format t1 (model_t1, packed_t1)."""
    from bitttt.session import InferenceModel

    m = tiny_model()
    files = {"checkpoint": tmp / "ck.safetensors", "model": tmp / "model.safetensors",
             "memory": tmp / "mem.safetensors", "packed": tmp / "w.safetensors",
             "model_t1": tmp / "model_t1.safetensors", "packed_t1": tmp / "w_t1.safetensors"}
    save_checkpoint(files["checkpoint"], params=m.params, optim=AdamW(m.params).state_tensors(), config=m.config,
                    train={"lr": 1e-3}, state={"step": 3, "optim_t": 0, "best_val": float("inf")},
                    tokenizer=tok.to_bytes())
    write_model_file(files["model"], m.config, m.params, tokenizer=tok.to_bytes(), model_id="m" * 64)
    write_model_file(files["model_t1"], m.config, m.params, tokenizer=tok.to_bytes(), model_id="m" * 64,
                     packing="t1")
    im = InferenceModel.from_model(m)
    st = im.new_state()
    im.feed(st, np.arange(7) % 300)
    im.save_memory(st, str(files["memory"]))
    write_packed(files["packed"], PackedTernary.quantize(np.random.default_rng(1).standard_normal((3, 40))))
    write_packed(files["packed_t1"], PackedTernary.quantize(np.random.default_rng(1).standard_normal((3, 340)),
                                                            format="t1"))
    return files


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(out: Path, header: dict | bytes, data: bytes, fix_meta: bool = True) -> Path:
    """Write `header` (a dict, its meta_crc32 recomputed when fix_meta and present; or raw bytes)
    followed by `data`."""
    out.write_bytes(file_bytes(header, data, fix_meta))
    return out


def file_bytes(header: dict | bytes, data: bytes, fix_meta: bool = True) -> bytes:
    """The bytes of a safetensors file with this header (see join) and data."""
    if isinstance(header, dict):
        meta = header.get("__metadata__")
        if fix_meta and isinstance(meta, dict) and "meta_crc32" in meta:
            meta["meta_crc32"] = meta_crc32(header)
        hb = json.dumps(header, separators=(",", ":")).encode()
    else:
        hb = header
    return struct.pack("<Q", len(hb)) + hb + data


def rewrite(src: Path, out: Path, fn, fix_meta: bool = True) -> Path:
    """Rewrite `src` into `out` with fn(header, data) -> data | None applied (checksums fixed)."""
    h, data = split(src)
    new = fn(h, data)
    return join(out, h, data if new is None else new, fix_meta)


def readers():
    """kind -> a function loading that kind of file to something comparable (arrays by name)."""
    from bitttt.formats import load_checkpoint, read_memory, read_model_file, read_packed
    from bitttt.session import InferenceModel

    def ck(p):
        c = load_checkpoint(p)
        return {**c.params, **c.optim, "_cfg": np.array(json.dumps(c.config.to_dict())), "_tok": np.frombuffer(
            c.tokenizer, np.uint8)}

    def model(p):
        mf = read_model_file(p)
        out = {k: np.asarray(v) for k, v in mf.params.items()}
        out.update({f"{k}.codes.{v.format}": v.codes for k, v in mf.packed.items()})
        out["_cfg"] = np.array(json.dumps(mf.config.to_dict()))
        im = InferenceModel.from_model_file(p)  # builds and runs the model too
        out["_logits"] = im.feed(im.new_state(), [1, 2, 3])
        return out

    def mem(p):
        m = read_memory(p)
        return {**m.arrays, "_pos": np.array(m.pos)}

    def packed(p):
        w = read_packed(p)
        return {"codes": w.codes, "scale": np.array(w.scale), "cols": np.array(w.cols), "format": np.array(w.format)}

    return {"checkpoint": ck, "model": model, "memory": mem, "packed": packed, "model_t1": model, "packed_t1": packed}


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


TRAIN_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "mini_batch_size": 8}


def prepared_corpus(d: Path) -> str:
    """A small prepared token folder (600 twelve-word stories, vocabulary 300) in d/data."""
    from bitttt.data import prepare

    rng = np.random.default_rng(0)
    words = ["Tom", "Anna", "Ben", "saw", "liked", "found", "a", "ball", "cat", "tree", "cake", "The", "end."]
    (d / "s.txt").write_text("\n<|endoftext|>\n".join(" ".join(rng.choice(words, 12)) for _ in range(600)))
    prepare([str(d / "s.txt")], str(d / "data"), vocab_size=300, val_fraction=0.1, seed=0, progress=False)
    return str(d / "data")


def train_config(prepared: str, out_dir, max_steps: int, **kw):
    """A TrainConfig of a tiny run named "run" in out_dir: checkpoints every 2 steps."""
    from bitttt.trainer import TrainConfig

    base = dict(data=prepared, out_dir=str(out_dir), name="run", model=dict(TRAIN_MODEL), batch_size=2, seq_len=16,
                max_steps=max_steps, max_time=0.0, warmup_steps=1, eval_interval=2, eval_batches=1, ckpt_interval=2,
                log_interval=1, seed=1, sample_tokens=0)
    base.update(kw)
    return TrainConfig(**base)
