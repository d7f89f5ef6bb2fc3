"""The Train tab's form: presets and every training field with its meaning and default.

PRESETS is a plain dict of `python -m bitttt.train` overrides (TrainConfig keys, `model.<field>` for
the model) so that the trainer's own presets can replace it later."""
from __future__ import annotations

import dataclasses

from ..config import BitLlamaConfig
from ..trainer import TrainConfig

PRESETS: dict[str, dict] = {
    "tiny": {"model.hidden_size": 64, "model.num_layers": 2, "model.num_heads": 2, "model.intermediate_size": 172,
             "batch_size": 8, "seq_len": 64, "max_steps": 300, "max_time": 120.0, "lr": 3e-3, "min_lr": 3e-4,
             "warmup_steps": 20, "eval_interval": 50, "ckpt_interval": 100},
    "small": {"model.hidden_size": 128, "model.num_layers": 4, "model.num_heads": 4, "model.intermediate_size": 344,
              "batch_size": 8, "seq_len": 128, "max_steps": 600, "max_time": 600.0, "lr": 3e-3, "min_lr": 3e-4,
              "warmup_steps": 50, "eval_interval": 100, "ckpt_interval": 250},
    "medium": {"model.hidden_size": 256, "model.num_layers": 6, "model.num_heads": 4, "model.intermediate_size": 688,
               "batch_size": 16, "seq_len": 256, "max_steps": 3000, "max_time": 0.0, "lr": 2e-3, "min_lr": 2e-4,
               "warmup_steps": 100, "eval_interval": 200, "ckpt_interval": 500},
}
PRESET_NOTES = {
    "tiny": "D=64, 2 layers: a first look in a minute or two",
    "small": "D=128, 4 layers: the trainer's defaults, minutes on a laptop",
    "medium": "D=256, 6 layers: an hour or more on a laptop CPU",
}

# (key, group, meaning); the default and type come from TrainConfig / BitLlamaConfig
_FIELDS = [
    ("model.hidden_size", "Model", "width D of the residual stream"),
    ("model.num_layers", "Model", "number of blocks (TTT layer + SwiGLU MLP each)"),
    ("model.num_heads", "Model", "TTT heads; D / heads must be even"),
    ("model.intermediate_size", "Model", "width of the SwiGLU MLP"),
    ("model.mini_batch_size", "Model", "TTT inner-loop mini-batch K: the inner weights update every K tokens"),
    ("model.ttt_base_lr", "Model", "learning rate of the TTT inner loop"),
    ("model.ternary", "Model", "1.58-bit ternary BitLinear weights (off: float weights)"),
    ("batch_size", "Batches", "sequences per micro-batch"),
    ("seq_len", "Batches", "tokens per training sequence"),
    ("grad_accum", "Batches", "micro-batches summed into one optimizer step"),
    ("max_steps", "Length", "optimizer steps to train (the cosine schedule ends here)"),
    ("max_time", "Length", "stop after this many seconds of training (0: no limit)"),
    ("lr", "Optimizer", "peak learning rate (AdamW)"),
    ("min_lr", "Optimizer", "learning rate at the end of the cosine decay"),
    ("warmup_steps", "Optimizer", "linear warmup from 0 to lr"),
    ("weight_decay", "Optimizer", "AdamW weight decay (matrices only)"),
    ("beta1", "Optimizer", "AdamW first-moment decay"),
    ("beta2", "Optimizer", "AdamW second-moment decay"),
    ("grad_clip", "Optimizer", "clip the gradient norm to this (0: off)"),
    ("eval_interval", "Evaluation", "evaluate on the validation split every N steps (and show a sample)"),
    ("eval_batches", "Evaluation", "validation batches per evaluation"),
    ("ckpt_interval", "Evaluation", "write a checkpoint every N steps"),
    ("keep_last", "Evaluation", "step checkpoints kept (best.safetensors is kept as well)"),
    ("log_interval", "Evaluation", "log loss, lr, tokens/s and RAM every N steps"),
    ("seed", "Other", "seed of the initial weights and the batch order"),
    ("threads", "Other", "kernel threads (0: physical cores)"),
    ("sample_tokens", "Other", "tokens of the sample printed at the end"),
]


def _type(v) -> str:
    return "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float"


def defaults() -> dict:
    """Every form key -> its default: TrainConfig's, its model dict's, BitLlamaConfig's for the rest."""
    tc = TrainConfig()
    mc = {f.name: f.default for f in dataclasses.fields(BitLlamaConfig)}
    mc.update(tc.model)
    out = {}
    for key, _, _ in _FIELDS:
        out[key] = mc[key[6:]] if key.startswith("model.") else getattr(tc, key)
    return out


def fields() -> list[dict]:
    """The form: [{key, group, help, default, type}] in display order."""
    d = defaults()
    return [{"key": k, "group": g, "help": h, "default": d[k], "type": _type(d[k])} for k, g, h in _FIELDS]


FIELD_KEYS = tuple(k for k, _, _ in _FIELDS)
