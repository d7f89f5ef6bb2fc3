"""The training loop: AdamW, warmup + cosine schedule, clipping, accumulation, evaluation,
checkpoints, resume, clean stops.

    from bitttt import Trainer, TrainConfig
    tr = Trainer(TrainConfig(data="prepared/", max_steps=500))   # or a dict, or a JSON file path
    tr.fit()                                                      # the whole run, with progress bar and log
    tr = Trainer.resume("runs/default")                           # continues bit-identically

A run directory (out_dir/name) holds `train_config.json`, `log.jsonl` (one JSON object per
logged step or evaluation), `checkpoints/step_NNNNNNN.safetensors` (the last `keep_last`),
`checkpoints/best.safetensors` (lowest validation loss) and, when the trainer prepared the
corpus itself, `data/` (token files and tokenizer).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field, fields

import numpy as np

from . import locks, runtime
from .config import BitLlamaConfig, known_fields
from .dist import FlatLayout, World
from .dist import world as _default_world
from .formats import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .formats.runs import checkpoint_step as _ckpt_step
from .layers.common import NonFiniteError
from .layers.loss import cross_entropy_forward
from .model import BitLlama, StreamCarry
from .monitor import Monitor
from .optim import AdamW, global_norm, lr_at

DEFAULT_MODEL = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 344,
                 "mini_batch_size": 16, "ternary": True}

# preset=NAME sets these model fields (model.<field>=... given with it wins); `bitttt train --help`
# prints each one's parameter count for the vocabulary size in use.
PRESETS = {
    "tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 344},  # the default
    "small": {"hidden_size": 256, "num_layers": 6, "num_heads": 4, "intermediate_size": 688},  # the shipped model
    "medium": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1376},
}


# the settings a resumed run may change (run length, logging, threads): the others would change the run
RESUME_OVERRIDES = frozenset({"max_steps", "max_time", "eval_interval", "eval_batches", "ckpt_interval", "keep_last",
                              "log_interval", "threads", "sample_tokens"})


def preset_params(name: str, vocab_size: int = 2048) -> int:
    """Parameters of the model preset `name` for a tokenizer of `vocab_size` tokens."""
    from .params import param_shapes

    cfg = BitLlamaConfig.from_dict({**DEFAULT_MODEL, **PRESETS[name], "vocab_size": vocab_size})
    return int(sum(int(np.prod(s)) for s in param_shapes(cfg).values()))


def _doc(default=dataclasses.MISSING, help: str = "", *, factory=None):
    """A dataclass field with its one-line meaning (`train --help` prints it)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs.  Durations are in optimizer steps unless named *_time (seconds).

    Data: `data` is a folder made by `python -m bitttt.data prepare` (train.bin, val.bin,
    tokenizer.model, manifest.json); `val_data` optionally another such folder, prepared with the
    same tokenizer and `--val-fraction 0`, whose tokens are the validation set instead.
    Without `data`, the files in `corpus` (or the built-in
    `builtin:python-docs`) are prepared into <run>/data with a new tokenizer of `vocab_size`.
    `model` holds BitLlamaConfig fields; its vocab_size comes from the tokenizer.
    Each field's meaning is in its metadata["help"] (TrainConfig.field_docs()).
    """

    name: str = _doc("default", "run name: the run directory is out_dir/name")
    out_dir: str = _doc("runs", "folder that holds the run directories")
    data: str | None = _doc(None, "prepared data folder (bitttt prepare); null: prepare `corpus` into <run>/data")
    val_data: str | None = _doc(None, "another prepared folder whose tokens are the validation set (optional)")
    corpus: list = _doc(help="text files to prepare when `data` is null (builtin:python-docs: the stdlib docstrings)",
                        factory=lambda: ["builtin:python-docs"])
    vocab_size: int = _doc(2048, "vocabulary of the tokenizer trained on `corpus` (not used with `data`)")
    tokenizer_type: str = _doc("unigram", "tokenizer trained on `corpus`: unigram or bpe")
    val_fraction: float = _doc(0.02, "share of `corpus` documents held out for validation")
    preset: str | None = _doc(None, "model shape: tiny, small or medium (see below); model.<field> given with it wins")
    model: dict = _doc(help="model shape, BitLlamaConfig fields (set one with model.<field>=value)",
                       factory=lambda: dict(DEFAULT_MODEL))
    batch_size: int = _doc(8, "sequences per micro-batch")
    seq_len: int = _doc(128, "tokens per training sequence (without stream the TTT state starts fresh at each)")
    stream: bool | None = _doc(None, "streaming training: each batch row reads consecutive windows of one stream "
                                     "of the text and the TTT state carries over from window to window (the "
                                     "gradient is truncated at the window edge), so the model learns from states "
                                     "that have read arbitrarily long text; null: on for a TTT model trained on "
                                     "one process, off on several ranks or without TTT layers")
    stream_half_life: int = _doc(512, "with stream: the carried state decays toward the fresh state with this "
                                      "half-life in tokens, once per window (model.state_decay = 1 - 0.5 ** "
                                      "(seq_len / half_life), model.state_decay_every = seq_len), so a state that "
                                      "has read any amount of text stays in the range training saw; 0: no decay "
                                      "(a model.state_decay given explicitly wins)")
    stream_max_len: int = _doc(65536, "with stream: the states' longest read in tokens; the batch's streams "
                                      "restart their state every seq_len ... stream_max_len tokens, spread "
                                      "geometrically (stream 0 every window), so training sees states of every "
                                      "age and trains the fresh state too (0: never restart)")
    reset_at_eot: bool = _doc(False, "with stream: restart the TTT state at the first mini-batch after each "
                                     "<|endoftext|> (off: the state reads across documents, as a chat does)")
    grad_accum: int = _doc(1, "micro-batches per optimizer step on each rank (tokens per step = "
                              "batch_size*seq_len*grad_accum*ranks)")
    max_steps: int = _doc(600, "optimizer steps to train for (the cosine schedule ends here)")
    max_time: float = _doc(180.0, "stop after this many seconds of training (0: no limit)")
    lr: float = _doc(3e-3, "peak learning rate (after warmup)")
    min_lr: float = _doc(3e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _doc(50, "steps of linear warmup from 0 to lr")
    weight_decay: float = _doc(0.1, "AdamW weight decay (matrices only)")
    beta1: float = _doc(0.9, "AdamW first-moment decay")
    beta2: float = _doc(0.95, "AdamW second-moment decay")
    eps: float = _doc(1e-8, "AdamW epsilon")
    grad_clip: float = _doc(1.0, "clip the global gradient norm to this (0: off)")
    eval_interval: int = _doc(100, "evaluate (and print a sample) every N steps")
    eval_batches: int = _doc(8, "validation batches per evaluation")
    ckpt_interval: int = _doc(250, "write a checkpoint every N steps")
    keep_last: int = _doc(3, "step checkpoints kept (best.safetensors is kept as well)")
    log_interval: int = _doc(10, "write a log line every N steps")
    seed: int = _doc(0, "seed of the weights and of the batch order")
    threads: int = _doc(0, "kernel threads (0: physical cores, shared among the ranks on this machine)")
    sample_tokens: int = _doc(48, "tokens of the sample printed at each evaluation (0: none)")

    @classmethod
    def field_docs(cls) -> list[tuple[str, object, str]]:
        """(name, default, meaning) of every field, in order."""
        out = []
        for f in fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append((f.name, default, f.metadata.get("help", "")))
        return out

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset in PRESETS and self.model == DEFAULT_MODEL:
            self.model = {**DEFAULT_MODEL, **PRESETS[self.preset]}  # TrainConfig(preset=...) with the default model
        self.validate()

    def validate(self) -> None:
        """ValueError / TypeError naming the field for any invalid value."""
        ints_pos = ("vocab_size", "batch_size", "seq_len", "grad_accum", "max_steps", "eval_interval",
                    "eval_batches", "ckpt_interval", "keep_last", "log_interval")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ints_pos or f.name in ("warmup_steps", "seed", "threads", "sample_tokens", "stream_max_len",
                                                   "stream_half_life"):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError(f"train.{f.name} must be an integer, got {v!r}")
                if f.name in ints_pos and v < 1:
                    raise ValueError(f"train.{f.name} must be >= 1, got {v}")
                if v < 0:
                    raise ValueError(f"train.{f.name} must be >= 0, got {v}")
            elif f.name in ("stream", "reset_at_eot"):
                if not isinstance(v, bool) and not (f.name == "stream" and v is None):
                    raise TypeError(f"train.{f.name} must be true or false, got {v!r}")
            elif f.name in ("max_time", "lr", "min_lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip",
                            "val_fraction"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise TypeError(f"train.{f.name} must be a finite number, got {v!r}")
                setattr(self, f.name, float(v))
        for k in ("lr", "eps"):
            if getattr(self, k) <= 0:
                raise ValueError(f"train.{k} must be > 0, got {getattr(self, k)}")
        for k in ("min_lr", "weight_decay", "max_time", "grad_clip"):
            if getattr(self, k) < 0:
                raise ValueError(f"train.{k} must be >= 0, got {getattr(self, k)}")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr})")
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be in [0, 1), got {getattr(self, k)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"train.preset must be one of {', '.join(PRESETS)} (or null), got {self.preset!r}")
        if self.tokenizer_type not in ("unigram", "bpe"):
            raise ValueError(f"train.tokenizer_type must be 'unigram' or 'bpe', got {self.tokenizer_type!r}")
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"train.name must be a plain folder name (letters, digits, . _ -), got {self.name!r}")
        for k in ("data", "val_data"):
            if getattr(self, k) is not None and not isinstance(getattr(self, k), str):
                raise TypeError(f"train.{k} must be a folder path or null, got {getattr(self, k)!r}")
        if not isinstance(self.corpus, list) or not all(isinstance(c, str) for c in self.corpus):
            raise TypeError(f"train.corpus must be a list of file paths, got {self.corpus!r}")
        if self.data is None and not self.corpus:
            raise ValueError("train.data or train.corpus must name the training text")
        if not isinstance(self.model, dict):
            raise TypeError(f"train.model must be an object of model config fields, got {self.model!r}")
        known_fields(BitLlamaConfig, self.model, "model config")
        if self.reset_at_eot and self.stream is False:
            raise ValueError("train.reset_at_eot needs train.stream (without it every sequence starts fresh anyway)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From a dict of fields; with "preset", the preset's model shape under the given model fields."""
        d = dict(known_fields(cls, d, "training config"))
        p = d.get("preset")
        if isinstance(p, str) and p in PRESETS:
            d["model"] = {**DEFAULT_MODEL, **PRESETS[p], **(d.get("model") or {})}
        return cls(**d)

    @classmethod
    def from_json(cls, path: str) -> TrainConfig:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def with_overrides(self, overrides: dict) -> TrainConfig:
        """A copy with `key: value` pairs applied; `model.<field>` keys go into the model dict."""
        d = self.to_dict()
        p = overrides.get("preset")
        if isinstance(p, str) and p in PRESETS:  # the preset first: model.<field> overrides win over it
            d["model"] = {**d["model"], **PRESETS[p]}
        for k, v in overrides.items():
            if k.startswith("model."):
                d["model"] = dict(d["model"])
                d["model"][k[6:]] = v
            else:
                d[k] = v
        return TrainConfig.from_dict(d)


def _check_new_run_dir(run_dir: str) -> None:
    """A new run must not start in a directory that holds a run (checkpoints, a log or a config)."""
    ck = os.path.join(run_dir, "checkpoints")
    held = [p for p in ("log.jsonl", "train_config.json") if os.path.exists(os.path.join(run_dir, p))]
    if os.path.isdir(ck) and any(p.endswith(".safetensors") for p in os.listdir(ck)):
        held.insert(0, "checkpoints")
    if held:
        raise ValueError(f"{run_dir} already holds a run ({', '.join(held)}): continue it with "
                         f"Trainer.resume({run_dir!r}) (python -m bitttt.train --resume {run_dir}), or pick another "
                         "name or out_dir")


def _check_fits(cfg: TrainConfig) -> None:
    """ValueError for a model config that is invalid, or a model and batch whose training needs
    (roughly: weights, gradients and AdamW moments, activations and logits of one batch) more than
    this machine's physical memory."""
    from .formats.validate import implied_size

    mcfg = BitLlamaConfig.from_dict({"vocab_size": cfg.vocab_size, **cfg.model})
    if mcfg.decays and (mcfg.state_decay_every % cfg.seq_len or cfg.stream is False):
        raise ValueError(f"model.state_decay_every ({mcfg.state_decay_every}) needs train.stream and a multiple of "
                         f"train.seq_len ({cfg.seq_len}): the state decays between training windows")
    sz = implied_size(mcfg)
    d, i, v, L = mcfg.hidden_size, mcfg.intermediate_size, mcfg.vocab_size, mcfg.num_layers
    need = 16 * sz.params + 4 * cfg.batch_size * cfg.seq_len * (L * (12 * d + 3 * i) + 2 * v)
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ValueError(f"this model (about {sz.params:,} parameters) with batch_size={cfg.batch_size} x "
                         f"seq_len={cfg.seq_len} needs about {need / 2**30:.1f} GiB to train, more than this "
                         f"machine's {have / 2**30:.1f} GiB: use a smaller model, batch_size or seq_len")


def _accumulate(acc: dict | None, grads: dict, weight: float | None) -> dict:
    """acc + grads (grads scaled in place by `weight` first, when given); grads itself when acc is None."""
    if weight is not None:
        for g in grads.values():
            g *= weight
    if acc is None:
        return grads
    for k, g in grads.items():
        acc[k] += g
    return acc


def _trim_log(path: str, step: int) -> None:
    """Drop the records of steps after `step` from a run's log (logged after the checkpoint a
    resumed run starts from), so that the log continues without repeated steps."""
    if not os.path.exists(path):
        return
    from .fileio import atomic_write_bytes

    keep, dropped = [], False
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
                at = rec.get("step", rec.get("summary", {}).get("step")) if isinstance(rec, dict) else None
            except (ValueError, AttributeError):
                at = None
            if isinstance(at, int) and at > step:
                dropped = True
                continue
            keep.append(line if line.endswith(b"\n") else line + b"\n")
    if dropped:
        atomic_write_bytes(path, b"".join(keep))


class Trainer:
    """Trains a BitLlama on prepared token files.  See the module docstring."""

    def __init__(self, config: TrainConfig | dict | str | None = None, *, run_dir: str | None = None,
                 progress: bool | None = None, world: World | None = None, check_every: int = 50,
                 _resume_from: str | None = None):
        """world: the ranks of a data-parallel run (default `bitttt.dist.world()`: MPI ranks when started by
        mpiexec, else this process alone); grad_accum counts micro-batches per rank, so a step learns from
        batch_size x grad_accum x world.size sequences.  check_every: on several ranks, compare a hash of
        the parameters across ranks every this many steps (and before each checkpoint)."""
        from .data import Batches, Streams, TokenData
        from .data.loader import geometric_periods
        from .tokenizer import Tokenizer

        if config is None:
            config = TrainConfig()
        elif isinstance(config, dict):
            config = TrainConfig.from_dict(config)
        elif isinstance(config, str):
            config = TrainConfig.from_json(config)
        config.validate()
        self.cfg = config
        self.run_dir = run_dir or os.path.join(config.out_dir, config.name)
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        self.progress = progress
        self.world = world if world is not None else _default_world()
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
        self.check_every = check_every
        if config.threads:
            runtime.set_num_threads(config.threads)
        elif self.world.size > 1 and not os.environ.get("BITTTT_NUM_THREADS"):
            # the ranks on one machine share its cores: cores / local ranks threads each
            runtime.set_num_threads(max(1, runtime.physical_cores() // self.world.local_size))

        if config.stream is None:  # auto: resolved once, so that the run (and its resume) keeps it
            mc = BitLlamaConfig.from_dict({"vocab_size": config.vocab_size, **config.model})
            config = config.with_overrides({"stream": self.world.size == 1 and mc.kind != "attention"})
            self.cfg = config
        if _resume_from is None:
            _check_new_run_dir(self.run_dir)
        _check_fits(config)  # the model config and the memory it needs, before any data is prepared
        ckpt = load_checkpoint(_resume_from) if _resume_from else None
        data_dir = config.data or os.path.join(self.run_dir, "data")
        need_data = ckpt is None and config.data is None and not os.path.exists(os.path.join(data_dir, "manifest.json"))
        if self.world.size > 1:
            need_data = self.world.bcast(need_data)  # rank 0 prepares, the others read its files
        if need_data and self.world.is_main:
            self._prepare_corpus(data_dir)
        if need_data:
            self.world.barrier()
        self.data_dir = data_dir
        self.train_data = TokenData(data_dir, "train")
        # a separate validation folder is prepared with --val-fraction 0: all its tokens are in train.bin
        self.val_data = TokenData(config.val_data, "train") if config.val_data else TokenData(data_dir, "val")
        tok_path = os.path.join(data_dir, "tokenizer.model")
        self.tokenizer = Tokenizer.load(tok_path)
        for d in (self.train_data, self.val_data):
            d.check_tokenizer(self.tokenizer.sha256)
        mcfg = dict(config.model)
        if mcfg.get("vocab_size", self.tokenizer.vocab_size) != self.tokenizer.vocab_size:
            raise ValueError(f"model.vocab_size is {mcfg['vocab_size']} but the tokenizer has "
                             f"{self.tokenizer.vocab_size} tokens: leave model.vocab_size out to take the tokenizer's")
        mcfg["vocab_size"] = self.tokenizer.vocab_size
        if config.stream and config.stream_half_life and "state_decay" not in mcfg:
            mcfg["state_decay"] = 1.0 - 0.5 ** (config.seq_len / config.stream_half_life)
            mcfg["state_decay_every"] = config.seq_len
        self.model_config = BitLlamaConfig.from_dict(mcfg)
        for d in (self.train_data, self.val_data):
            if d.vocab_size > self.model_config.vocab_size:
                raise ValueError(f"{d.path}: token data has vocabulary {d.vocab_size}, larger than the model's "
                                 f"{self.model_config.vocab_size}")
        self.model = BitLlama(self.model_config)
        self.model.init_weights(config.seed)
        self.opt = AdamW(self.model.params, betas=(config.beta1, config.beta2), eps=config.eps,
                         weight_decay=config.weight_decay, backend=self.model.backend)
        self.carries: list[StreamCarry] = []
        if config.stream:
            if self.world.size > 1:
                raise ValueError("train.stream runs on one process for now (the carried TTT state is not shared "
                                 "between ranks): start it without mpiexec")
            if all(t == "attention" for t in self.model_config.types):
                raise ValueError("train.stream carries the TTT state: this model has no TTT layers")
            n_streams = config.batch_size * config.grad_accum
            periods = (geometric_periods(n_streams, config.seq_len, config.stream_max_len)
                       if config.stream_max_len else None)
            self.batches = Streams(self.train_data, config.batch_size, config.seq_len, config.seed,
                                   groups=config.grad_accum, periods=periods)
            self.carries = [StreamCarry(self.model_config, config.batch_size, self.model.dtype)
                            for _ in range(config.grad_accum)]
        else:
            self.batches = Batches(self.train_data, config.batch_size, config.seq_len, config.seed)
        self.step = 0
        self.best_val = float("inf")
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.last_eval: dict | None = None
        self.monitor = Monitor()
        if ckpt is not None:
            self._restore(ckpt)
        if self.world.size > 1:
            self._check_ranks("starting weights and optimizer state")

    # -- data ------------------------------------------------------------------------
    def _prepare_corpus(self, data_dir: str) -> None:
        from .data import BUILTIN, prepare, write_builtin

        cfg = self.cfg
        os.makedirs(self.run_dir, exist_ok=True)
        files = []
        for c in cfg.corpus:
            if c in BUILTIN:
                src = os.path.join(self.run_dir, c.split(":", 1)[1] + ".txt")
                if not os.path.exists(src):
                    print(f"writing the built-in corpus {c} to {src}", file=sys.stderr)
                    write_builtin(c, src)
                files.append(src)
            else:
                files.append(c)
        prepare(files, data_dir, vocab_size=cfg.vocab_size, model_type=cfg.tokenizer_type,
                val_fraction=cfg.val_fraction, seed=cfg.seed, progress=self._show_progress())

    def _show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else bool(self.progress)

    # -- state -----------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "optim_t": self.opt.t, "data": self.batches.state(), "best_val": self.best_val,
                "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed, "threads": runtime.get_num_threads(),
                "world_size": self.world.size}

    def _restore(self, ck) -> None:
        if ck.config != self.model_config:
            raise CheckpointError(f"{ck.path}: the checkpoint's model config does not match this run's")
        if ck.tokenizer is not None:
            import hashlib

            if hashlib.sha256(ck.tokenizer).hexdigest() != self.tokenizer.sha256:
                raise CheckpointError(f"{ck.path}: the checkpoint was trained with another tokenizer than "
                                      f"{self.data_dir}/tokenizer.model")
        self.model.load_state_dict(ck.params)
        self.opt = AdamW(self.model.params, betas=(self.cfg.beta1, self.cfg.beta2), eps=self.cfg.eps,
                         weight_decay=self.cfg.weight_decay, backend=self.model.backend)
        st = ck.state
        self.opt.load_state_tensors(ck.optim, st["optim_t"])
        self.batches.load_state(st["data"])
        self.step = int(st["step"])
        self.best_val = float(st.get("best_val", float("inf")))
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.elapsed = float(st.get("elapsed_s", 0.0))
        for g, carry in enumerate(self.carries):
            pre = f"stream.{g}."
            try:
                carry.load_arrays({k[len(pre):]: v for k, v in ck.extra.items() if k.startswith(pre)})
            except ValueError as e:
                raise CheckpointError(f"{ck.path}: {e} (group {g}): the checkpoint does not hold this run's "
                                      "streaming state") from None

    def save(self, path: str | None = None) -> str:
        """Write a checkpoint (weights, optimizer moments, schedule position, data position,
        config, tokenizer) to `path`, default <run>/checkpoints/step_NNNNNNN.safetensors.
        On several ranks only rank 0 writes (the others return the path)."""
        if path is None:
            path = os.path.join(self.ckpt_dir, f"step_{self.step:07d}.safetensors")
            if not self.world.is_main:
                return path
            os.makedirs(self.ckpt_dir, exist_ok=True)
        elif not self.world.is_main:
            return path
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        extra = {f"stream.{g}.{k}": v for g, c in enumerate(self.carries) for k, v in c.arrays().items()}
        save_checkpoint(path, params=self.model.params, optim=self.opt.state_tensors(), config=self.model_config,
                        train=self.cfg.to_dict(), state=self._state(), tokenizer=self.tokenizer.to_bytes(),
                        extra=extra)
        return path

    def _prune(self) -> None:
        if not self.world.is_main:
            return
        ckpts = sorted((p for p in os.listdir(self.ckpt_dir) if _ckpt_step(p) >= 0), key=_ckpt_step)
        for p in ckpts[:-self.cfg.keep_last]:
            os.unlink(os.path.join(self.ckpt_dir, p))

    @classmethod
    def resume(cls, run_dir: str, overrides: dict | None = None, *, progress: bool | None = None,
               world: World | None = None, check_every: int = 50) -> Trainer:
        """Continue a run from its newest intact checkpoint: model, optimizer moments, schedule,
        data position and counters are restored, so the run continues bit-identically.
        `overrides` may change run-length and logging keys (max_steps, max_time, intervals, threads).
        Any number of ranks that divides the checkpoint's global batch (in micro-batches) may resume
        it: grad_accum becomes global micro-batches / world.size, and the run stays the same."""
        w = world if world is not None else _default_world()
        path, err = None, None
        if w.is_main:  # rank 0 picks the checkpoint, so every rank loads the same one
            try:
                path = run_dir if os.path.isfile(run_dir) else latest_checkpoint(run_dir)
            except CheckpointError as e:
                err = str(e)
        if w.size > 1:
            path, err = w.bcast((path, err))
        if err is not None:
            raise CheckpointError(err)
        ck = load_checkpoint(path)
        cfg = TrainConfig.from_dict(ck.train)
        micro = cfg.grad_accum * int(ck.state.get("world_size", 1))
        if micro % w.size:
            e = ValueError(f"{path}: a step of this run learns from {micro} micro-batches of {cfg.batch_size} "
                           f"sequences, which {w.size} ranks cannot share evenly: resume it on a number of ranks "
                           f"that divides {micro}")
            e.collective = True  # every rank reads the same checkpoint and stops here
            raise e
        if micro // w.size != cfg.grad_accum:
            cfg = cfg.with_overrides({"grad_accum": micro // w.size})
        if overrides:
            allowed = RESUME_OVERRIDES
            bad = sorted(set(overrides) - allowed)
            if bad:
                raise ValueError(f"cannot change {', '.join(bad)} when resuming (it would change the run); "
                                 f"allowed: {', '.join(sorted(allowed))}")
            cfg = cfg.with_overrides(overrides)
        rd = run_dir if os.path.isdir(run_dir) else os.path.dirname(os.path.dirname(os.path.abspath(path)))
        return cls(cfg, run_dir=rd, progress=progress, world=w, check_every=check_every, _resume_from=path)

    # -- steps -----------------------------------------------------------------------
    def train_step(self, batch=None) -> float:
        """One optimizer step; returns the mean training loss per counted token of the step.

        batch: None (take `grad_accum` micro-batches from the loader) or (x, y) / (x, y, mask)
        with x, y int [B, T] (y = targets of x) and mask [B, T] of 0/1 (or None).
        The step's gradient is the sum of the per-token gradients over all its micro-batches divided
        by their counted tokens (mask ones, or B x T without a mask): micro-batches with more counted
        tokens weigh more, one with none is skipped.  On several ranks the step takes
        grad_accum x world.size micro-batches (rank r computes its share, see bitttt.dist) and gives
        every rank the result one process with grad_accum x world.size would get."""
        cfg, ranks = self.cfg, self.world.size
        if batch is not None and ranks > 1:
            raise ValueError("train_step(batch) runs on one process; on several ranks every step takes its "
                             "micro-batches from the loader")
        if self.carries and batch is None:
            return self._stream_step()  # a given batch is a plain step: its sequences start fresh
        micro = [batch] if batch is not None else [self.batches.next() for _ in range(cfg.grad_accum * ranks)]
        micro = [(mb[0], mb[1], mb[2] if len(mb) > 2 else None) for mb in micro]
        counts = [float(np.asarray(x).size) if m is None else float(np.sum(m, dtype=np.float64)) for x, _, m in micro]
        for x, _, _ in micro:
            self.tokens_seen += int(np.asarray(x).size)
        total_w = sum(counts)
        if total_w <= 0:
            e = ValueError(f"step {self.step + 1}: the loss mask of every micro-batch is all zeros: no token to "
                           "learn from (the instruction records hold no response tokens?)")
            e.collective = True
            raise e
        # equal counts (no mask): the plain mean over micro-batches; else weigh each by its tokens
        weighted = len(set(counts)) > 1
        if ranks > 1:
            acc, losses = self._grads_ranks(micro, counts, weighted)
        else:
            acc, losses = None, []
            for (x, y, m), c in zip(micro, counts):
                if c == 0:
                    losses.append(None)
                    continue
                loss, grads = self.model.loss_and_grads(x, y, m)
                losses.append(loss)
                acc = _accumulate(acc, grads, c if weighted else None)
        total = 0.0
        for loss, c in zip(losses, counts):
            if loss is not None:
                total += loss * c if weighted else loss
        denom = total_w if weighted else len(micro)
        self._apply(acc, denom)
        return total / denom

    def _stream_step(self) -> float:
        """train_step of a streaming run: micro-batch g continues the streams of group g from the
        state group g's carry holds (restarted where Streams marks a jump, and with reset_at_eot
        after each <|endoftext|>); the carries then hold the states after these windows."""
        cfg, k = self.cfg, self.model_config.mini_batch_size
        eos = self.tokenizer.eos_id
        acc, total, total_w = None, 0.0, 0.0
        for _ in range(cfg.grad_accum):
            x, y, m = self.batches.next()
            carry = self.carries[self.batches.group]
            carry.fresh |= self.batches.fresh
            resets = ends = None
            if cfg.reset_at_eot:  # ends[b, c]: mini-batch c of row b holds an <|endoftext|>
                ends = np.logical_or.reduceat(x == eos, np.arange(0, x.shape[1], k), axis=1)
                resets = np.zeros(ends.shape, dtype=np.uint8)
                resets[:, 1:] = ends[:, :-1]
            self.tokens_seen += int(x.size)
            c = float(x.size) if m is None else float(np.sum(m, dtype=np.float64))
            if c == 0:  # nothing to learn from, but the state still reads the window
                self.model.forward(x, carry=carry, resets=resets)
            else:
                loss, grads = self.model.loss_and_grads(x, y, m, carry=carry, resets=resets)
                acc = _accumulate(acc, grads, c)
                total += loss * c
                total_w += c
            if ends is not None:  # an <|endoftext|> in the last mini-batch: the next window starts fresh
                carry.fresh = ends[:, -1].copy()
        if total_w <= 0:
            raise ValueError(f"step {self.step + 1}: the loss mask of every micro-batch is all zeros: no token to "
                             "learn from")
        self._apply(acc, total_w)
        return total / total_w

    def _grads_ranks(self, micro: list, counts: list[float], weighted: bool):
        """The sum of the step's micro-batch gradients on several ranks -> (acc by name, losses in
        micro-batch order).  Rank r computes micro-batches r*grad_accum ...; the losses are gathered
        and the gradients summed in micro-batch order (bitttt.dist.World.ordered_sum)."""
        w, a = self.world, self.cfg.grad_accum
        if getattr(self, "_layout", None) is None:
            self._layout = FlatLayout(self.model.params)
        layout = self._layout
        losses, parts, error = [], [], None
        try:
            for i in range(w.rank * a, (w.rank + 1) * a):
                if counts[i] == 0:
                    losses.append(None)
                    continue
                x, y, m = micro[i]
                loss, grads = self.model.loss_and_grads(x, y, m)
                losses.append(loss)
                if weighted:
                    for g in grads.values():
                        g *= counts[i]
                if parts and w.rank == 0:  # rank 0 heads the chain: its running sum is the fold itself
                    layout.pack(grads, parts[0], add=True)
                else:
                    parts.append(layout.pack(grads))
                del grads
        except NonFiniteError as e:
            error = str(e)
        gathered = w.allgather((losses, error))  # every rank learns of a failure on any rank
        for r, (_, err) in enumerate(gathered):
            if err is not None:
                e = NonFiniteError(f"rank {r}: {err}")
                e.collective = True
                raise e
        return layout.views(w.ordered_sum(parts)), [loss for rank_losses, _ in gathered for loss in rank_losses]

    def _apply(self, acc: dict[str, np.ndarray], n: float) -> None:
        """The AdamW step with gradient acc / n (clipped on its norm); acc by name, taken in parameter order."""
        cfg = self.cfg
        acc = {k: acc[k] for k in self.model.params}  # the norm sums in one fixed order on every path
        norm = global_norm(acc) / n
        if not math.isfinite(norm):
            e = NonFiniteError(f"gradient norm is {norm} at step {self.step}: training diverged")
            e.collective = True  # every rank holds the same sum, so every rank stops here
            raise e
        gscale = 1.0 / n
        if cfg.grad_clip > 0 and norm > cfg.grad_clip:
            gscale *= cfg.grad_clip / norm
        lr = lr_at(self.step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps)
        self.opt.step(acc, lr, gscale)
        self.step += 1
        self.last_lr, self.last_grad_norm = lr, norm

    def _check_ranks(self, what: str = "parameters") -> None:
        """DistributedError on every rank unless all hold the same parameters (a CRC-32 per tensor);
        at the start also the optimizer moments and the counters."""
        w = self.world
        if w.size == 1:
            return
        tensors = dict(self.model.params)
        if what != "parameters":
            tensors.update(self.opt.state_tensors())
            tensors["state"] = np.frombuffer(json.dumps(
                [self.step, self.opt.t, self.batches.state(), self.tokens_seen]).encode(), np.uint8)
        w.check_same(tensors, f"{what} at step {self.step}")

    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Validation loss (nats/token), perplexity and bits per byte over the first `max_batches`
        (default eval_batches) non-overlapping windows of the validation split.  On several ranks,
        rank r evaluates batches r, r + world.size, ... and every rank gets the one-process figures."""
        cfg = self.cfg
        nb = max_batches or cfg.eval_batches
        ranks = self.world.size
        terms, error = [], None  # (batch, loss x weight, weight) of the batches this rank evaluates
        try:
            for i, (x, y, m) in enumerate(self.val_data.iter_eval(cfg.batch_size, cfg.seq_len, nb)):
                if i % ranks != self.world.rank:
                    continue
                logits = self.model.forward(x)
                w = np.ones(y.shape, np.float32) if m is None else m.astype(np.float32)
                if w.sum() == 0:
                    continue
                loss, _ = cross_entropy_forward(self.model.backend, logits, y, w)
                terms.append((i, float(loss) * float(w.sum()), float(w.sum())))
        except NonFiniteError as e:
            if ranks == 1:
                raise
            error = f"rank {self.world.rank}: {e}"
        if ranks > 1:  # gathered even after a failure, so that no rank waits for one that stopped
            gathered = self.world.allgather((terms, error))
            errors = [err for _, err in gathered if err is not None]
            if errors:
                e = NonFiniteError(f"evaluation failed: {errors[0]}")
                e.collective = True
                raise e
            terms = sorted(t for part, _ in gathered for t in part)
        tot, cnt = 0.0, 0.0
        for _, lw, wsum in terms:
            tot += lw
            cnt += wsum
        if cnt == 0:
            raise ValueError("the validation split has no tokens to evaluate")
        loss = tot / cnt
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
        if self.val_data.n_bytes:  # bits per byte of the split's source text
            out["val_bpb"] = loss / math.log(2) * self.val_data.n_tokens / self.val_data.n_bytes
        return out

    # -- the run ---------------------------------------------------------------------
    def _log(self, rec: dict) -> None:
        if not self.world.is_main:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        with open(os.path.join(self.run_dir, "log.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def estimate(self) -> dict:
        """Before training: parameters, tokens per step, and the seconds per step and peak RAM
        measured on a trial step (forward + backward on random tokens of the batch shape, times
        grad_accum (on each rank); nothing is updated, no batch is drawn: the run is unchanged).  With max_time,
        the steps that fit in it and when the run will end."""
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.world.size  # each rank: grad_accum
        rng = np.random.default_rng(12345)
        x = rng.integers(0, self.model_config.vocab_size, (cfg.batch_size, cfg.seq_len + 1))
        s_step = float("inf")
        for _ in range(2):  # the first call pays one-time costs (allocations); a second is taken when cheap
            t0 = time.perf_counter()
            _, grads = self.model.loss_and_grads(x[:, :-1], x[:, 1:], None)
            global_norm(grads)
            del grads
            took = time.perf_counter() - t0
            s_step = min(s_step, took * cfg.grad_accum)
            if took > 2.0:
                break
        peak = _peak_rss_mb()
        steps = max(cfg.max_steps - self.step, 0)
        by_time = None
        if cfg.max_time:
            by_time = max(int((cfg.max_time - self.elapsed) / max(s_step, 1e-9)), 0)
        n = steps if by_time is None else min(steps, by_time)
        return {"params": self.model.num_params(), "tokens_per_step": tokens_per_step, "s_per_step": s_step,
                "peak_rss_mb": peak, "steps": n, "limited_by": "max_time" if by_time is not None and by_time < steps
                else "max_steps", "eta_s": n * s_step}

    def _resources(self, snap: dict) -> str:
        """The progress bar's resource figure, labelled: this process's RSS and the system's RAM use."""
        text = f"RSS {snap['rss_mb']:.0f} MiB, system RAM {snap['ram_used_pct']:.0f}% used"
        if "gpu_mem_mb" in snap:
            text += f", GPU {snap['gpu_mem_mb'] / 1024:.1f} GiB {snap['gpu_util_pct']:.0f}%"
        return text

    def _bar_total(self, start_step: int, t_train: float) -> int:
        """Steps the progress bar runs to: max_steps, or fewer when max_time will stop the run
        first (from the seconds per step so far), so that its ETA is the run's."""
        cfg = self.cfg
        done = self.step - start_step
        if not cfg.max_time or done < 1:
            return cfg.max_steps
        left = (cfg.max_time - self.elapsed) / max(t_train / done, 1e-9)
        return int(min(cfg.max_steps, self.step + max(left, 0) + 0.999))

    def _eta(self, start_step: int, t_train: float) -> str:
        """Time left, from the seconds per step so far and the step the run will stop at."""
        done = self.step - start_step
        if done < 1:
            return "?"
        left = int(round((self._bar_total(start_step, t_train) - self.step) * t_train / done))
        if left < 3600:
            return f"{left // 60}:{left % 60:02d}"
        return f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"

    def sample(self, prompt: str = "", n: int = 48, temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> str:
        """A short continuation of `prompt` by the current weights (printed at each evaluation)."""
        from .generation import Model
        from .session import InferenceModel

        model = Model(InferenceModel.from_model(self.model, self.tokenizer))
        return model.generate(prompt, max_tokens=n, temperature=temperature, top_k=top_k, seed=seed)

    def fit(self) -> dict:
        """Train until max_steps or max_time (whichever comes first), a signal (Ctrl+C, SIGTERM)
        or a STOP file in the run directory; evaluate, log and checkpoint on the way.  Returns
        the summary (also printed).  The run directory is locked meanwhile (bitttt.locks, by rank 0,
        the one that writes): a second trainer on it is refused (LockedError)."""
        if not self.world.is_main:
            return self._fit()
        os.makedirs(self.ckpt_dir, exist_ok=True)
        with locks.hold(self.run_dir, "run directory"):
            if self.step:
                _trim_log(os.path.join(self.run_dir, "log.jsonl"), self.step)
            return self._fit()

    def _fit(self) -> dict:
        cfg = self.cfg
        main, ranks = self.world.is_main, self.world.size
        if main:  # leftovers of a write that was killed (under the lock: no other trainer is writing)
            for p in os.listdir(self.ckpt_dir):
                if p.startswith(".tmp-") and p.endswith(".part"):
                    os.unlink(os.path.join(self.ckpt_dir, p))
        cfg_path = os.path.join(self.run_dir, "train_config.json")
        if main and not os.path.exists(cfg_path):
            from .fileio import atomic_write_bytes

            atomic_write_bytes(cfg_path, (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
        stop_file = os.path.join(self.run_dir, "STOP")
        self._stop: str | None = None
        old = {}

        def handler(signum, frame):
            if self._stop is not None:  # a second signal: stop now (the last checkpoint is intact)
                raise KeyboardInterrupt
            self._stop = signal.Signals(signum).name

        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: no signal handling
            old = {}
        show = self._show_progress() and main
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stderr)
        start_step, start_tokens = self.step, self.tokens_seen
        t_train = 0.0  # seconds inside train_step (the throughput figure)
        t_run = time.perf_counter()
        elapsed0 = self.elapsed
        reason = "max_steps"
        last_log_t, last_log_tok = time.perf_counter(), self.tokens_seen
        ckpt_path = None
        snap = self.monitor.snapshot()
        try:
            while self.step < cfg.max_steps:
                why = None
                if cfg.max_time and self.elapsed >= cfg.max_time:
                    why = "max_time"
                elif self._stop is not None:
                    why = self._stop
                elif main and os.path.exists(stop_file):
                    why = "STOP file"
                    os.unlink(stop_file)
                if ranks > 1:  # every rank stops at the same step: the first reason, in rank order
                    why = next((r for r in self.world.allgather(why) if r is not None), None)
                if why is not None:
                    reason = why
                    break
                t0 = time.perf_counter()
                loss = self.train_step()
                t_train += time.perf_counter() - t0
                if ranks > 1 and (self.step % self.check_every == 0 or self.step % cfg.ckpt_interval == 0
                                  or self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps):
                    self._check_ranks()  # also before anything (a checkpoint, best.safetensors) is written
                self.elapsed = elapsed0 + time.perf_counter() - t_run
                if self.step % cfg.log_interval == 0 or self.step == 1:
                    now = time.perf_counter()
                    tps = (self.tokens_seen - last_log_tok) / max(now - last_log_t, 1e-9)
                    last_log_t, last_log_tok = now, self.tokens_seen
                    snap = self.monitor.snapshot()
                    rec = {"step": self.step, "loss": round(loss, 5), "lr": self.last_lr,
                           "grad_norm": round(self.last_grad_norm, 5), "tokens": self.tokens_seen,
                           "tokens_per_s": round(tps, 1), "elapsed_s": round(self.elapsed, 3), **snap}
                    self._log(rec)
                    if bar is None and main:
                        print(f"step {self.step:6d} | loss {loss:.4f} | lr {self.last_lr:.2e} | "
                              f"{tps:,.0f} tok/s | {self._resources(snap)} | ETA {self._eta(start_step, t_train)}",
                              file=sys.stderr, flush=True)
                if bar is not None:
                    bar.total = self._bar_total(start_step, t_train)  # the ETA respects max_time
                    bar.update(1)
                    bar.set_postfix_str(f"loss {loss:.3f} lr {self.last_lr:.1e} "
                                        f"{(self.tokens_seen - start_tokens) / max(t_train, 1e-9):,.0f} tok/s "
                                        f"{self._resources(snap)}", refresh=False)
                if self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps:
                    self._eval_and_log(bar)
                if self.step % cfg.ckpt_interval == 0:
                    ckpt_path = self._checkpoint()
        except NonFiniteError as e:
            if bar is not None:
                bar.close()
            last = None
            try:
                last = latest_checkpoint(self.run_dir)
            except CheckpointError:
                pass
            err = NonFiniteError(f"{e} (step {self.step + 1}); nothing was saved from it"
                                 + (f"; the last good checkpoint is {last}" if last else "")
                                 + ". Try a lower lr or a stronger grad_clip.")
            err.collective = getattr(e, "collective", False)
            raise err from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if bar is not None:
            bar.close()
        if self.last_eval is None or self.last_eval["step"] != self.step:
            if self.step > start_step:
                self._eval_and_log(None)
        if self.step > start_step and (ckpt_path is None or _ckpt_step(ckpt_path) != self.step):
            if ranks > 1:
                self._check_ranks()
            ckpt_path = self._checkpoint()
        wall = time.perf_counter() - t_run
        trained = self.tokens_seen - start_tokens
        summary = {"run_dir": self.run_dir, "stopped_by": reason, "step": self.step, "tokens": self.tokens_seen,
                   "wall_s": round(wall, 2), "train_tokens_per_s": round(trained / max(t_train, 1e-9), 1),
                   "overall_tokens_per_s": round(trained / max(wall, 1e-9), 1),
                   "best_val_loss": self.best_val, "checkpoint": ckpt_path,
                   "peak_rss_mb": self.monitor.snapshot()["peak_rss_mb"], "threads": runtime.get_num_threads(),
                   "ranks": ranks}
        if ranks > 1:
            summary["reduce_s"] = round(self.world.reduce_s, 3)  # inside the gradient sums (bitttt.dist)
        if self.last_eval:
            summary.update({k: v for k, v in self.last_eval.items() if k != "step"})
        self._log({"summary": summary})
        if main:
            self._print_summary(summary)
        return summary

    def _eval_and_log(self, bar) -> None:
        ev = self.evaluate()
        ev["step"] = self.step
        self.last_eval = ev
        self._log({**ev, "elapsed_s": round(self.elapsed, 3)})
        improved = ev["val_loss"] < self.best_val
        if improved:
            self.best_val = ev["val_loss"]
        msg = (f"eval step {self.step}: val loss {ev['val_loss']:.4f}, ppl {ev['val_ppl']:.2f}"
               + (f", {ev['val_bpb']:.3f} bits/byte" if "val_bpb" in ev else "") + (" (best)" if improved else ""))
        text = self._sample_text() if self.world.is_main else None
        if text is not None:
            self._last_sample = (self.step, text)
            self._log({"step": self.step, "sample": text})
            msg += "\n" + _quote(text)
        if self.world.is_main:
            (bar.write if bar is not None else lambda s: print(s, file=sys.stderr, flush=True))(msg)
        if improved:
            self.save(os.path.join(self.ckpt_dir, "best.safetensors"))

    def _checkpoint(self) -> str:
        path = self.save()
        self._prune()
        return path

    def _print_summary(self, s: dict) -> None:
        lines = [f"stopped by {s['stopped_by']} at step {s['step']} ({s['tokens']:,} tokens, {s['wall_s']:.1f} s)",
                 f"throughput: {s['train_tokens_per_s']:,.0f} tokens/s in training steps, "
                 f"{s['overall_tokens_per_s']:,.0f} overall, {s['threads']} thread(s)"
                 + (f" on each of {s['ranks']} ranks" if s.get("ranks", 1) > 1 else "") + "; "
                 f"peak RSS {s['peak_rss_mb']:.0f} MiB"]
        if "val_loss" in s:
            lines.append(f"validation: loss {s['val_loss']:.4f}, perplexity {s['val_ppl']:.2f}"
                         + (f", {s['val_bpb']:.3f} bits/byte" if "val_bpb" in s else "")
                         + f" (best {s['best_val_loss']:.4f})")
        if s["checkpoint"]:
            lines.append(f"checkpoint: {s['checkpoint']}")
            lines.append(f"resume with: bitttt train --resume {self.run_dir}   (or python -m bitttt.train ...)")
            lines.append(f"run it: bitttt run -m {self.run_dir} -p \"...\"; chat: bitttt chat -m {self.run_dir}")
        if s["step"] > 0:
            last = getattr(self, "_last_sample", None)
            text = last[1] if last and last[0] == s["step"] else self._sample_text()
            if text is not None:
                lines.append("sample:\n" + _quote(text))
        print("\n".join(lines), flush=True)

    def _sample_text(self) -> str | None:
        """A sample of sample_tokens tokens (None when sample_tokens is 0); a failure is reported in
        its place, never raised: a sample is a courtesy."""
        if not self.cfg.sample_tokens:
            return None
        try:
            return self.sample("", self.cfg.sample_tokens)
        except Exception as e:
            return f"(no sample: {e})"


def _quote(text: str) -> str:
    """Plain text set off by a bar at each line (a sample as the model wrote it, newlines included)."""
    return "\n".join("  | " + line for line in (text.strip("\n") or "(empty)").split("\n"))


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB (the current RSS where the OS keeps no peak)."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / (2**20 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20
