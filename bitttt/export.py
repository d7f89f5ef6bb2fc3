"""Export a packed model file: `python -m bitttt.export RUN_OR_CHECKPOINT --out MODEL.safetensors`.

One safetensors file, for inference only (no optimizer state):
    layers.{i}.{ttt,mlp}.*_proj.weight.{codes,scale,shape}   BitLinear weights, 2-bit packed
                                                             (bitttt.PackedTernary; float32 when
                                                             the model is not ternary)
    embed.weight                                             float16 [V, D]
    head.weight.int8 + head.weight.scale                     the LM head, int8 per row with a
                                                             float32 absmax scale per row
                                                             (--head float16|float32 to keep more)
    everything else (norms, TTT inner parameters)            float32, by the model's names
metadata: format "bitttt-model/1", config, tokenizer (base64) and its sha256, model_id (the
identity memory files are tagged with: that of the source checkpoint, so memories move between
the checkpoint and its export), head format, source and step.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, read_safetensors, write_safetensors
from .config import BitLlamaConfig
from .ternary import PackedTernary

MODEL_FORMAT = "bitttt-model/1"
HEAD_FORMATS = ("int8", "float16", "float32")


def _is_linear(name: str) -> bool:
    return name.endswith("_proj.weight") and name.startswith("layers.")


def quantize_head(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8: w [V, D] -> (q int8 [V, D], scale float32 [V]) with w ~ q * scale."""
    amax = np.max(np.abs(w), axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def export(src: str, out: str, head: str = "int8") -> dict:
    """Write the packed model file for a checkpoint or run directory `src`; returns its metadata."""
    from .generation import _resolve
    from .session import weights_id

    if head not in HEAD_FORMATS:
        raise ValueError(f"head format must be one of {', '.join(HEAD_FORMATS)}, got {head!r}")
    path = _resolve(os.fspath(src))
    ck = load_checkpoint(path)
    cfg = ck.config
    if ck.tokenizer is None:
        raise ValueError(f"{path}: the checkpoint carries no tokenizer")
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, str] = {}
    for name, w in ck.params.items():
        w = np.ascontiguousarray(w, dtype=np.float32)
        if _is_linear(name) and cfg.ternary:
            t, m = PackedTernary.quantize(w).to_tensors(name)
            tensors.update(t)
            meta.update({k: v for k, v in m.items() if k.endswith("crc32")})
        elif name == "embed.weight":
            tensors[name] = w.astype(np.float16)
        else:
            tensors[name] = w
    hw = ck.params["embed.weight" if cfg.tie_word_embeddings else "lm_head.weight"].astype(np.float32)
    if head == "int8":
        tensors["head.weight.int8"], tensors["head.weight.scale"] = quantize_head(hw)
    elif head == "float16":
        tensors["head.weight"] = hw.astype(np.float16)
    else:
        tensors["head.weight"] = hw
    tensors.pop("lm_head.weight", None)
    meta.update({"format": MODEL_FORMAT, "config": cfg.to_json(), "tokenizer": base64.b64encode(ck.tokenizer).decode(),
                 "tokenizer_sha256": hashlib.sha256(ck.tokenizer).hexdigest(),
                 "model_id": weights_id(cfg, ck.params), "head": head, "source": os.path.abspath(path),
                 "step": str(ck.state.get("step", ""))})
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_safetensors(out, tensors, meta)
    return meta


def load_packed(path: str):
    """Read a packed model file -> bitttt.session.InferenceModel (errors name the file)."""
    from .session import InferenceModel
    from .tokenizer import Tokenizer

    t, meta = read_safetensors(path)
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a bitttt model file (format {meta.get('format')!r})")
    try:
        cfg = BitLlamaConfig.from_json(meta["config"])
        tok = Tokenizer.from_bytes(base64.b64decode(meta["tokenizer"]))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupted metadata ({e})") from None
    from .model import param_shapes

    packed, params = {}, {}
    for name in param_shapes(cfg):
        if _is_linear(name) and cfg.ternary:
            packed[name] = PackedTernary.from_tensors(t, meta, prefix=name, source=path)
        elif name == "lm_head.weight":
            continue
        elif name == "embed.weight" and name in t:
            params[name] = t[name]  # float16 rows, converted when looked up
        elif name in t:
            params[name] = t[name].astype(np.float32)
        else:
            raise CheckpointError(f"{path}: missing tensor {name}")
    head_int8 = None
    if "head.weight.int8" in t and "head.weight.scale" in t:
        head_int8 = (t["head.weight.int8"], t["head.weight.scale"])
    elif "head.weight" in t:
        params["head.weight"] = t["head.weight"].astype(np.float32)
    else:
        raise CheckpointError(f"{path}: missing the LM head")
    if not cfg.tie_word_embeddings:  # the constructor wants every name; the head used is the one above
        params["lm_head.weight"] = np.zeros((cfg.vocab_size, cfg.hidden_size), np.float32)
        if head_int8 is None:
            params["lm_head.weight"] = params["head.weight"]
    try:
        return InferenceModel(cfg, params, tok, source=path, packed=packed, model_id=meta.get("model_id"),
                              head_int8=head_int8)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitttt.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="run directory (its best checkpoint) or checkpoint file")
    ap.add_argument("--out", required=True, help="the model file to write")
    ap.add_argument("--head", choices=HEAD_FORMATS, default="int8", help="LM head format (default int8)")
    args = ap.parse_args(argv)
    try:
        meta = export(args.src, args.out, args.head)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = json.loads(meta["config"])
    print(f"wrote {args.out}: {os.path.getsize(args.out) / 2**20:.2f} MiB, D={cfg['hidden_size']}, "
          f"{cfg['num_layers']} layers, V={cfg['vocab_size']}, head {meta['head']}, from {meta['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
