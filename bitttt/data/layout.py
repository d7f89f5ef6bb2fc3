"""The prepared data folder: its file names, format tag and token dtype, shared by the writer and the loader.

A folder holds ``tokenizer.model``, ``train.bin`` / ``val.bin`` (raw little-endian token ids),
``train.mask`` / ``val.mask`` (only when the data has instruction records) and ``manifest.json`` (written last).
"""
from __future__ import annotations

import numpy as np

FORMAT = "bitttt-tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
SPLITS = ("train", "val")


class DataError(ValueError):
    """A problem with the input data or the output folder; the message says what to do."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian dtype of token files: uint16 when every id fits (vocab_size <= 65536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")
