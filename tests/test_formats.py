"""bitttt.formats: one safetensors reader/writer for every file, legacy files, damage, run directories."""
import ast
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import bitttt
from bitttt import BitLlama, BitLlamaConfig, PackedTernary
from bitttt.formats import (
    CheckpointError,
    MemoryFileError,
    PackedFormatError,
    export_checkpoint,
    latest_checkpoint,
    packed_from_tensors,
    read_memory,
    read_model_file,
    read_packed,
    read_safetensors,
    resolve,
    save_checkpoint,
    write_memory,
    write_packed,
)
from bitttt.formats.memory import memory_shapes
from bitttt.optim import AdamW
from bitttt.session import InferenceModel

HERE = Path(__file__).resolve().parent
SHIPPED = Path(bitttt.__file__).parent / "models" / "tinystories-ternary.safetensors"
LEGACY_PACKED = HERE / "data" / "legacy_packed_5x257.safetensors"  # PackedTernary.save at commit ad2c298
CFG = BitLlamaConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48,
                     mini_batch_size=4)


def _flip(src: Path, dst: Path, pos: int, bits: int = 0x01) -> Path:
    raw = bytearray(src.read_bytes())
    raw[pos] ^= bits
    dst.write_bytes(bytes(raw))
    return dst


def _data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _checkpoint(path, step=1, seed=3, tokenizer=b"tok"):
    m = BitLlama(CFG)
    m.init_weights(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(path, params=m.params, optim=AdamW(m.params).state_tensors(), config=CFG, train={},
                    state={"step": step, "optim_t": 0}, tokenizer=tokenizer)
    return m


# -- legacy files ------------------------------------------------------------------------
def test_legacy_packed_file_with_the_old_checksum_loads():
    p = read_packed(LEGACY_PACKED)
    assert p.shape == (5, 257) and np.float32(p.scale) == np.float32(0.7732059359550476)
    assert hashlib.sha256(p.codes.tobytes()).hexdigest() == \
        "b0411f22d23bddcda042b4b49a1cb59a641bbb0cdc01b785f8d30569d47b970e"
    _, meta = read_safetensors(LEGACY_PACKED, verify=False)
    assert meta == {"bitttt.format": "bitttt.ternary/1", "crc32": "9c5102db"}  # the old per-matrix scheme
    # its tensors and metadata still rebuild the matrix, and the old checksum is still checked
    t, _ = read_safetensors(LEGACY_PACKED, verify=False)
    assert packed_from_tensors(t, metadata=meta) == p
    with pytest.raises(PackedFormatError, match="checksum mismatch"):
        packed_from_tensors(t, metadata={**meta, "crc32": "00000000"})


def test_legacy_packed_file_damage_is_detected(tmp_path):
    p = read_packed(LEGACY_PACKED)
    # a code flipped 0b00 <-> 0b10 in the last row stays a valid code: only the old checksum sees it
    j = next(j for j in range(64) if p.codes[4, j] & 3 != 1)
    codes_at = 8 + int.from_bytes(LEGACY_PACKED.read_bytes()[:8], "little") + 20  # after shape and scale
    bad = _flip(LEGACY_PACKED, tmp_path / "old.safetensors", codes_at + 4 * p.stride + j, 0b10)
    with pytest.raises(PackedFormatError, match="old.safetensors.*checksum mismatch"):
        read_packed(bad)


def test_shipped_model_file_reads_as_plain_data():
    mf = read_model_file(SHIPPED)
    cfg = mf.config
    assert mf.metadata["format"] == "bitttt-model/1" and mf.model_id == mf.metadata["model_id"]
    # one CRC per tensor and one over the metadata (the model shipped before this one, trained
    # without streaming, was written with per-matrix checksums as well)
    assert "crc32" in mf.metadata and "meta_crc32" in mf.metadata
    assert cfg.state_decay > 0 and cfg.state_decay_every == 256 and mf.metadata["seq_len"] == "256"
    assert len(mf.packed) == 7 * cfg.num_layers and all(isinstance(p, PackedTernary) for p in mf.packed.values())
    assert mf.head_int8 is not None and mf.head is None
    assert mf.head_int8[0].shape == (cfg.vocab_size, cfg.hidden_size) and mf.head_int8[0].dtype == np.int8
    assert mf.params["embed.weight"].dtype == np.float16
    assert hashlib.sha256(mf.tokenizer).hexdigest() == mf.metadata["tokenizer_sha256"]
    assert not any(k.endswith("_proj.weight") for k in mf.params)


def test_shipped_model_one_damaged_byte_is_refused(tmp_path):
    copy = tmp_path / "shipped.safetensors"
    shutil.copyfile(SHIPPED, copy)
    bad = _flip(copy, tmp_path / "damaged.safetensors", copy.stat().st_size - 7)
    with pytest.raises(CheckpointError, match="damaged.safetensors.*corrupted"):
        InferenceModel.from_file(str(bad))


# -- new files: one CRC scheme -----------------------------------------------------------
def test_new_packed_file_has_one_crc_scheme(tmp_path, rng):
    p = PackedTernary.quantize(rng.standard_normal((5, 300)).astype(np.float32))
    f = tmp_path / "p.safetensors"
    write_packed(f, p)
    t, meta = read_safetensors(f)  # the common reader checks it
    assert set(meta) == {"bitttt.format", "crc32", "meta_crc32"} and meta["bitttt.format"] == "bitttt.ternary/2"
    assert read_packed(f) == p and t["codes"].ctypes.data % 64 == 0


def test_every_damaged_byte_of_a_packed_file_is_refused(tmp_path, rng):
    p = PackedTernary.quantize(rng.standard_normal((2, 70)).astype(np.float32))
    f = tmp_path / "p.safetensors"
    write_packed(f, p)
    for pos in range(f.stat().st_size):
        bad = _flip(f, tmp_path / "bad.safetensors", pos)
        with pytest.raises(PackedFormatError, match="bad.safetensors"):
            read_packed(bad)


def test_one_damaged_byte_in_each_kind_of_file(tmp_path):
    ck = tmp_path / "ck.safetensors"
    _checkpoint(ck)
    with pytest.raises(CheckpointError, match="bad-ck.safetensors.*corrupted"):
        from bitttt.formats import load_checkpoint

        load_checkpoint(_flip(ck, tmp_path / "bad-ck.safetensors", ck.stat().st_size - 3))
    # a packed model file (exported with a real tokenizer from the shipped model)
    mf = read_model_file(SHIPPED)
    _checkpoint(ck, tokenizer=mf.tokenizer)
    model = tmp_path / "m.safetensors"
    export_checkpoint(ck, model)
    with pytest.raises(CheckpointError, match="bad-m.safetensors.*corrupted"):
        read_model_file(_flip(model, tmp_path / "bad-m.safetensors", _data_start(model) + 1))
    # a memory file
    im = InferenceModel.from_file(str(model))
    mem = tmp_path / "s.mem"
    im.save_memory(im.new_state(), str(mem))
    with pytest.raises(MemoryFileError, match="bad.mem.*corrupted"):
        im.load_memory(str(_flip(mem, tmp_path / "bad.mem", mem.stat().st_size - 1)))
    # a packed ternary file
    f = tmp_path / "p.safetensors"
    write_packed(f, PackedTernary.quantize(np.ones((3, 10), np.float32)))
    with pytest.raises(PackedFormatError, match="bad-p.safetensors.*corrupted"):
        read_packed(_flip(f, tmp_path / "bad-p.safetensors", _data_start(f)))


def test_model_file_metadata_and_plain_data(tmp_path):
    mf = read_model_file(SHIPPED)
    ck = tmp_path / "run" / "checkpoints" / "step_0000003.safetensors"
    _checkpoint(ck, step=3, tokenizer=mf.tokenizer)
    out = tmp_path / "m.safetensors"
    meta = export_checkpoint(tmp_path / "run", out, head="float32")
    assert meta["source"] == "step_0000003.safetensors" and meta["step"] == "3"  # a file name, no absolute path
    m = read_model_file(out)
    assert m.metadata["source"] == "step_0000003.safetensors"
    assert not [k for k in m.metadata if k.endswith(".crc32")]  # one CRC scheme: the per-tensor `crc32`
    assert m.head is not None and m.head.dtype == np.float32 and m.head_int8 is None
    with pytest.raises(ValueError, match="head format"):
        export_checkpoint(ck, out, head="int4")


def test_memory_file_round_trip_as_plain_data(tmp_path):
    shapes = memory_shapes(CFG)
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    write_memory(tmp_path / "a.mem", arrays, model_id="abc", config=CFG, pos=3, n_tokens=11, note="hi")
    m = read_memory(tmp_path / "a.mem", model_id="abc")
    assert (m.pos, m.n_tokens, m.note, m.model_id, m.format) == (3, 11, "hi", "abc", "bitttt-memory/2")
    assert all(np.array_equal(m.arrays[n], arrays[n]) for n in shapes)
    with pytest.raises(MemoryFileError, match="a.mem.*another model"):
        read_memory(tmp_path / "a.mem", model_id="xyz")
    write_memory(tmp_path / "b.mem", arrays, model_id="abc", config=CFG, pos=4, n_tokens=11)
    with pytest.raises(MemoryFileError, match="b.mem.*invalid mini-batch position 4"):
        read_memory(tmp_path / "b.mem")
    with pytest.raises(MemoryFileError, match="none.mem.*no such memory file"):
        read_memory(tmp_path / "none.mem")


# -- run directories ---------------------------------------------------------------------
def test_run_resolution_skips_a_damaged_newest_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    cdir = run / "checkpoints"
    for step in (2, 4, 10):
        _checkpoint(cdir / f"step_{step:07d}.safetensors", step=step)
    newest = cdir / "step_0000010.safetensors"
    _flip(newest, newest, newest.stat().st_size - 2)  # one byte
    assert resolve(run) == str(cdir / "step_0000004.safetensors")
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint" in err and "step_0000010" in err
    assert latest_checkpoint(str(run)) == str(cdir / "step_0000004.safetensors")
    _checkpoint(cdir / "best.safetensors", step=2)
    assert resolve(run) == str(cdir / "best.safetensors")  # the best one wins
    assert resolve(newest) == str(newest)  # a file as is
    with pytest.raises(FileNotFoundError, match="nothing"):
        resolve(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        resolve(tmp_path / "empty")


def test_formats_import_no_model_or_session():
    """Formats return plain data: nothing under bitttt/formats imports the model side."""
    banned = {"session", "generation", "model", "trainer", "layers", "export", "infer", "eval", "train", "backend"}
    for f in (Path(bitttt.__file__).parent / "formats").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                mods = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                assert not banned.intersection(mods), f"{f.name} imports {mods}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("bitttt"), f"{f.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("bitttt.") for a in node.names), f.name
