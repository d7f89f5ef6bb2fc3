"""bitttt's files, in one place.  Every reader returns plain data (arrays, dataclasses), never a
model or a session; every file goes through the one safetensors reader/writer (CRC-32 per
tensor, atomic write).

  safetensors   read_safetensors, read_metadata, write_safetensors, check_crc32
  packed        PackedTernary tensor sets and files: packed_tensors, packed_from_tensors,
                read_packed, write_packed
  checkpoint    training checkpoints: save_checkpoint, load_checkpoint -> Checkpoint
  model_file    packed model files: write_model_file, export_checkpoint, read_model_file -> ModelFile
  memory        memory files (TTT states): write_memory, read_memory -> MemoryData
  runs          run directories: resolve, latest_checkpoint
  validate      the checks of what a file claims: safe_json, parse_config, check_limits, ...
  errors        FormatError and its CheckpointError, MemoryFileError, PackedFormatError, TokenFileError
"""
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .errors import CheckpointError, FormatError, MemoryFileError, PackedFormatError, TokenFileError
from .memory import MemoryData, memory_shapes, read_memory, write_memory
from .model_file import ModelFile, export_checkpoint, read_model_file, weights_id, write_model_file
from .packed import packed_from_tensors, packed_tensors, read_packed, write_packed
from .runs import latest_checkpoint, resolve
from .safetensors import check_crc32, read_metadata, read_safetensors, write_safetensors

__all__ = [
    "Checkpoint", "CheckpointError", "FormatError", "MemoryData", "MemoryFileError", "ModelFile",
    "PackedFormatError", "TokenFileError", "check_crc32", "export_checkpoint", "latest_checkpoint", "load_checkpoint",
    "memory_shapes", "packed_from_tensors", "packed_tensors", "read_memory", "read_metadata",
    "read_model_file", "read_packed", "read_safetensors", "resolve", "save_checkpoint", "weights_id",
    "write_memory", "write_model_file", "write_packed", "write_safetensors",
]
