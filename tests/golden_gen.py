"""Writes tests/data/golden.json: the SHA-256 of every logit, loss, gradient, AdamW update, TTT state
and decoded token array of small fixed-seed models (dtype, shape and bytes), plus the losses and the
decoded ids in clear, from the code as it was before the backends refactor (commit a389299).
tests/test_golden.py asserts that today's code gives the same bits.  Run from the repo root:

    python tests/golden_gen.py                     # only to re-baseline on purpose
    python tests/golden_gen.py --add-fingerprints  # add the float64 fingerprints, the hashes unchanged

The float64 arrays come from the NumPy backend, whose matmuls are NumPy's BLAS: OpenBLAS picks its
kernels by CPU (or by OPENBLAS_CORETYPE), and another kernel sums in another order, which moves the
last bits (seen: 1.5e-13 of the largest element with OPENBLAS_CORETYPE=Haswell on a Zen 5).  So each
float64 array also gets a fingerprint (its norm and four random projections) that the test compares
to 1e-12 of the norm when the bits differ (the Haswell kernels moved them by 8.5e-15 of it); the
float32 and integer arrays (the C paths) stay exact.
"""
import hashlib
import json
import os

import numpy as np

import bitttt
from bitttt import BitLlama, BitLlamaConfig


def tiny(ternary: bool, dtype) -> BitLlama:
    cfg = BitLlamaConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
                         mini_batch_size=8, ternary=ternary)
    m = BitLlama(cfg, dtype=dtype)
    m.init_weights(3)
    rng = np.random.default_rng(7)
    m.params["embed.weight"] *= m.dtype.type(4)
    for k, v in m.params.items():  # TTT parameters away from their init, as after training
        if k.endswith(("learnable_token_idx", "learnable_ttt_lr_bias", "ttt_norm_bias")):
            m.params[k] = (v + rng.normal(0, 0.3, v.shape)).astype(m.dtype)
    return m


def digest(a: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(a: np.ndarray) -> list[float]:
    """[||a||_2, r_1 . a, ..., r_4 . a] over the flattened array, r_i fixed unit-variance random / sqrt(n)."""
    x = np.ascontiguousarray(a, dtype=np.float64).ravel()
    r = np.random.default_rng(x.size).standard_normal((4, x.size)) / np.sqrt(max(x.size, 1))
    return [float(np.linalg.norm(x))] + [float(v) for v in r @ x]


def fingerprints(d: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """The fingerprint of every float64 array of `d`."""
    return {k: fingerprint(v) for k, v in d.items() if v.dtype == np.float64}


def write_atomic(path: str, doc: dict) -> None:
    """golden.json written through a temporary file, fsync and rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cases() -> dict[str, np.ndarray]:
    from bitttt.optim import AdamW
    from bitttt.session import InferenceModel

    out = {}
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, 96, (2, 29))  # T not a multiple of K
    for ternary in (True, False):
        for dtype in (np.float32, np.float64):
            tag = f"{'t' if ternary else 'f'}{np.dtype(dtype).itemsize * 8}"
            m = tiny(ternary, dtype)
            out[f"{tag}/logits"] = m.forward(tokens[:, :-1])
            mask = (rng.random((2, 28)) > 0.2).astype(np.float32)
            loss, grads = m.loss_and_grads(tokens[:, :-1], tokens[:, 1:], mask)
            out[f"{tag}/loss"] = np.array(loss)
            for k, g in grads.items():
                out[f"{tag}/grad/{k}"] = g
            opt = AdamW(m.params, weight_decay=0.1)
            opt.step(grads, 1e-3, 0.5)
            opt.step(grads, 1e-3, 0.5)
            for k, p in m.params.items():
                out[f"{tag}/adamw/{k}"] = p
            if dtype == np.float32:  # inference: prefill, then decode
                m = tiny(ternary, dtype)
                im = InferenceModel.from_model(m)
                st = im.new_state()
                lg = im.feed(st, tokens[0, :21], all_logits=True)
                out[f"{tag}/prefill_logits"] = lg
                ids, steps, pick = [], [], np.random.default_rng(5)

                def sample(z, pick=pick):  # a random model's argmax repeats one token: sample, seeded
                    e = np.exp(z.astype(np.float64) - z.max())
                    return int(pick.choice(z.size, p=e / e.sum()))

                nxt = sample(lg[-1])
                for _ in range(19):
                    ids.append(nxt)
                    lg1 = im.feed(st, [nxt])
                    steps.append(lg1)
                    nxt = sample(lg1)
                out[f"{tag}/decode_ids"] = np.array(ids)
                out[f"{tag}/decode_logits"] = np.stack(steps)
                out[f"{tag}/state_W0"] = st.W0
                out[f"{tag}/state_Gb"] = st.Gb
    shipped = bitttt.load(os.path.join(os.path.dirname(bitttt.__file__), "models", "tinystories-ternary.safetensors"))
    s = shipped.session()
    s.feed("Once upon a time")
    text = s.generate(" there", max_tokens=40, temperature=0.0)
    out["shipped/history"] = np.array(s.history)
    out["shipped/text"] = np.frombuffer(text.encode(), dtype=np.uint8)
    return out


if __name__ == "__main__":
    import sys

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden.json")
    d = cases()
    if sys.argv[1:] == ["--add-fingerprints"]:
        with open(path) as f:
            doc = json.load(f)
        bad = [k for k, h in doc["sha256"].items() if digest(d[k]) != h]
        if bad:
            sys.exit(f"{len(bad)} arrays differ from the recorded bits (first {bad[0]}): fingerprints refused; "
                     "run on a machine whose BLAS gives the recorded bits (e.g. OPENBLAS_CORETYPE unset)")
        doc["f64_fingerprint"] = fingerprints(d)
        write_atomic(path, doc)
        print(f"added {len(doc['f64_fingerprint'])} float64 fingerprints to {path}")
        sys.exit(0)
    if sys.argv[1:]:
        sys.exit(__doc__)
    clear = {k: v.tolist() for k, v in d.items() if k.endswith(("/loss", "_ids", "/history"))}
    clear["shipped/text"] = d["shipped/text"].tobytes().decode()
    write_atomic(path, {"sha256": {k: digest(v) for k, v in d.items()}, "clear": clear,
                        "f64_fingerprint": fingerprints(d)})
    print(f"wrote {path}: {len(d)} arrays, {os.path.getsize(path)} bytes")
