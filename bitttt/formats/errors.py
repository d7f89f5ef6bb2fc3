"""The errors of bitttt's files: each names the file and what is wrong with it."""
from __future__ import annotations


class FormatError(ValueError):
    """A bitttt file that is missing, truncated, corrupted, foreign or does not fit (base class)."""


class CheckpointError(FormatError):
    """A checkpoint or packed model file that is missing, truncated, corrupted, foreign or does not
    match the config."""


class MemoryFileError(FormatError):
    """A memory (TTT state) file that is missing, damaged, or belongs to another model."""


class PackedFormatError(FormatError):
    """A packed ternary file or tensor set is truncated, corrupted or not ours."""


class TokenFileError(FormatError):
    """A prepared token-data folder (manifest.json, token or mask file) that is missing, damaged or not ours."""
