"""The seeded fuzz test of every file kind bitttt reads (issue 21): checkpoints, packed model files,
memory files, packed ternary files (with the tokenizer inside the first two; model and packed files
in both packed formats, t2 and the 1.6-bit t1) and token-data manifests. Each kind gets a few
hundred damaged and crafted files: random byte flips (anywhere and in the header), truncations,
extensions, and header mutations (JSON of the wrong type, bad dtypes, shapes and offsets, extra or
missing tensors, hostile metadata and config values, nesting bombs),
some with every checksum recomputed as an attacker would.  They go through the real loaders in a
forked child under an address-space limit (resource.setrlimit) and a per-case timer.  Each case
must be refused with the file-format error (bitttt.FormatError), or load to the same model (the
same arrays, config and logits) when the damage left every checked byte intact; a crafted file
whose checksums were recomputed may also load to a model it describes consistently."""
from __future__ import annotations

import copy
import json
import os
import pickle
import resource
import signal
import struct
import time
import zlib

import numpy as np
import pytest
from hostile_files import file_bytes, make_files, readers, same, tokenizer_bytes

from bitttt import FormatError

SEED = 21
CASES = {"checkpoint": 220, "model": 200, "memory": 260, "packed": 300, "manifest": 260, "model_t1": 150,
         "packed_t1": 300}
CASE_SECONDS = 5
MEMORY_MARGIN = 1 << 30  # bytes of address space a case may add


class CaseTimeout(Exception):
    pass


WEIRD = [None, True, False, -1, 0, 1, 2.5, 2**63, 2**64, -(2**63) - 1, "", "x", "F32", [], [1], [[1]], {}, {"a": 1},
         1e308, "/etc/passwd", "/dev/zero", "[[[[", "{}", "Infinity", "NaN", "AAAA", "\u0000"]
CONFIG_VALUES = [0, -1, 1, 2, 3, 7, 10**7, 2**20, 2**31, 2**64, 1e100, 0.5, True, None, "4", [], 1e-300, 10**400]


def _tensor_names(h: dict) -> list[str]:
    return sorted(k for k in h if k != "__metadata__")


def _header_mutation(rng: np.random.Generator, h: dict, data: bytes) -> tuple[dict | bytes, bytes, bool]:
    """One crafted header -> (header dict or raw bytes, data, whether checksums were recomputed)."""
    h = copy.deepcopy(h)
    names = _tensor_names(h)
    meta = h["__metadata__"]
    op = int(rng.integers(0, 14))
    fix = bool(rng.integers(0, 2))
    name = names[int(rng.integers(0, len(names)))]
    if op == 0:  # a JSON value of the wrong kind for the whole header
        return json.dumps(WEIRD[int(rng.integers(0, len(WEIRD)))]).encode(), data, False
    if op == 1:
        h[name]["dtype"] = ["F32", "F16", "I32", "U8", "I8", "I64", "F64", "U16", "U32", "BF16", "F8_E4M3", 3][
            int(rng.integers(0, 12))]
    elif op == 2:
        shape = list(h[name]["shape"])
        if shape:
            shape[int(rng.integers(0, len(shape)))] = WEIRD[int(rng.integers(0, len(WEIRD)))]
        else:
            shape = [WEIRD[int(rng.integers(0, len(WEIRD)))]]
        h[name]["shape"] = shape
    elif op == 3:
        h[name]["data_offsets"][int(rng.integers(0, 2))] = WEIRD[int(rng.integers(0, len(WEIRD)))]
    elif op == 4:  # consistent-looking offsets that overlap or reach past the end
        lo, hi = h[name]["data_offsets"]
        d = int(rng.integers(-64, 65))
        h[name]["data_offsets"] = [max(0, lo + d), max(0, hi + d)]
    elif op == 5:
        del h[name]
    elif op == 6:  # an extra tensor with its bytes and checksum
        extra = rng.integers(0, 256, int(rng.integers(1, 64))).astype(np.uint8).tobytes()
        h["extra." + name] = {"dtype": "U8", "shape": [len(extra)], "data_offsets": [len(data), len(data) + len(extra)]}
        crcs = json.loads(meta["crc32"])
        crcs["extra." + name] = zlib.crc32(extra)
        meta["crc32"] = json.dumps(crcs)
        data += extra
    elif op == 7:  # a metadata entry replaced by a hostile value (JSON text or a path)
        key = sorted(meta)[int(rng.integers(0, len(meta)))]
        v = WEIRD[int(rng.integers(0, len(WEIRD)))]
        meta[key] = v if rng.integers(0, 2) else json.dumps(v)
    elif op == 8 and "config" in meta:  # a config field of the model changed
        c = json.loads(meta["config"])
        k = sorted(c)[int(rng.integers(0, len(c)))]
        c[k] = CONFIG_VALUES[int(rng.integers(0, len(CONFIG_VALUES)))]
        meta["config"] = json.dumps(c) if not isinstance(c[k], int) or c[k] < 10**300 else \
            json.dumps(c).replace(str(c[k]), "1" + "0" * 400)
    elif op == 9:  # a nesting bomb inside a metadata entry or the header
        depth = int(rng.integers(100, 200_000))
        key = sorted(meta)[int(rng.integers(0, len(meta)))]
        meta[key] = "[" * depth + "]" * depth
        if rng.integers(0, 2):
            return b'{"a":' + b"[" * depth + b"]" * depth + b"}", data, False
    elif op == 10:  # the tensor's shape reshaped to another with the same byte count
        n = int(np.prod(h[name]["shape"], dtype=np.int64))
        h[name]["shape"] = [n] if len(h[name]["shape"]) != 1 else [1, n]
    elif op == 11:  # a metadata entry removed
        del meta[sorted(meta)[int(rng.integers(0, len(meta)))]]
    elif op == 12:  # an unknown metadata entry added (fine in a file whose meta_crc32 covers it)
        meta["extra"] = "x"
    elif op == 13:  # a __metadata__ that is not a str -> str object
        h["__metadata__"] = WEIRD[int(rng.integers(0, len(WEIRD)))]
        fix = False
    return h, data, fix


def _mutate(rng: np.random.Generator, raw: bytes) -> tuple[bytes, bool]:
    """One damaged or crafted file -> (bytes, whether its checksums were recomputed)."""
    (n,) = struct.unpack("<Q", raw[:8])
    kind = int(rng.integers(0, 6))
    b = bytearray(raw)
    if kind == 0:  # random byte flips anywhere
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        return bytes(b), False
    if kind == 1:  # one bit flipped in the header (the padding included)
        b[8 + int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
        return bytes(b), False
    if kind == 2:  # truncated
        return raw[:int(rng.integers(0, len(raw)))], False
    if kind == 3:  # extended, or the length field changed
        if rng.integers(0, 2):
            return raw + rng.integers(0, 256, int(rng.integers(1, 100))).astype(np.uint8).tobytes(), False
        lengths = [0, 1, n - 1, n + 1, 2**63, 2**64 - 1, len(raw)]
        return struct.pack("<Q", lengths[int(rng.integers(0, len(lengths)))]) + raw[8:], False
    h = json.loads(raw[8:8 + n])
    header, data, fix = _header_mutation(rng, h, raw[8 + n:])
    return file_bytes(header, data, fix_meta=fix), fix and not isinstance(header, bytes)


def _manifest_mutation(rng: np.random.Generator, text: str) -> str:
    m = json.loads(text)
    op = int(rng.integers(0, 5))
    if op == 0:
        b = bytearray(text.encode())
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        return b.decode("latin-1")
    if op == 1:
        return text[:int(rng.integers(0, len(text)))]
    paths = [("dtype",), ("format",), ("format_version",), ("tokenizer", "vocab_size"), ("splits", "train", "tokens"),
             ("splits", "train", "file"), ("splits", "train", "mask_file"), ("splits",), ("tokenizer",)]
    path = paths[int(rng.integers(0, len(paths)))]
    d = m
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = (WEIRD + ["float16", "int64", "uint32", "uint16", "../train.bin", "/etc/passwd", 99, 10**30])[
        int(rng.integers(0, len(WEIRD) + 8))]
    if op == 4:
        return "[" * int(rng.integers(100, 100_000))
    return json.dumps(m)


def _run_cases(kind: str, files: dict, workdir: str) -> list[str]:
    """In the forked child: every case of `kind`; -> the failures (case number, what happened)."""
    from bitttt.data import TokenData

    rng = np.random.default_rng([SEED, list(CASES).index(kind)])
    fails: list[str] = []
    counts = {"refused": 0, "same": 0, "crafted": 0}

    def alarm(signum, frame):
        raise CaseTimeout

    signal.signal(signal.SIGALRM, alarm)
    if kind == "manifest":
        folder = files["manifest"]
        text = open(os.path.join(folder, "manifest.json"), encoding="utf-8").read()
        want = np.array(TokenData(folder, "train").tokens)
        load = None
    else:
        load = readers()[kind]
        raw = open(files[kind], "rb").read()
        want = load(files[kind])
    for i in range(CASES[kind]):
        target = os.path.join(workdir, f"{kind}.st")
        if kind == "manifest":
            with open(os.path.join(folder, "manifest.json"), "w", encoding="latin-1") as f:
                f.write(_manifest_mutation(rng, text))
            fixed = True
        else:
            data, fixed = _mutate(rng, raw)
            with open(target, "wb") as f:
                f.write(data)
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            got = np.array(TokenData(folder, "train").tokens) if kind == "manifest" else load(target)
            counts["same" if kind != "manifest" and same(want, got) else "crafted"] += 1
            if not fixed and not same(want, got):
                fails.append(f"case {i}: loaded to a different model although no checksum was recomputed")
            elif kind == "manifest" and got.size and not np.array_equal(got, want[:got.size]):
                fails.append(f"case {i}: token data read differently")
        except FormatError as e:
            counts["refused"] += 1
            msg = str(e)
            if kind != "manifest" and target not in msg:
                fails.append(f"case {i}: the error does not name the file: {msg[:200]}")
        except CaseTimeout:
            fails.append(f"case {i}: took more than {CASE_SECONDS} s")
        except BaseException as e:  # noqa: BLE001  (anything else is a defect: MemoryError, RecursionError...)
            fails.append(f"case {i}: {type(e).__name__}: {str(e)[:200]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return fails + [f"outcomes {json.dumps(counts)}"]


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _in_child(fn, *args) -> list[str]:
    """fn(*args) in a forked child under RLIMIT_AS (its current size + MEMORY_MARGIN)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            limit = _vm_bytes() + MEMORY_MARGIN
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            out = fn(*args)
        except BaseException as e:  # noqa: BLE001
            out = [f"the child failed: {type(e).__name__}: {e}"]
        with os.fdopen(w, "wb") as f:
            pickle.dump(out, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        blob = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the fuzz child died (status {status})"
    return pickle.loads(blob)


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    files = {k: str(v) for k, v in make_files(d, tokenizer_bytes(d)).items()}
    data = d / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, 300, 1000).astype("<u2").tofile(data / "train.bin")
    (data / "manifest.json").write_text(json.dumps({
        "format": "bitttt-tokens", "format_version": 1, "dtype": "uint16",
        "tokenizer": {"vocab_size": 300, "sha256": "0" * 64},
        "splits": {"train": {"file": "train.bin", "tokens": 1000, "documents": 3, "bytes": 4000}}}))
    files["manifest"] = str(data)
    return files, str(d)


@pytest.mark.parametrize("kind", list(CASES))
def test_fuzz(fuzz_files, kind):
    files, workdir = fuzz_files
    t = time.perf_counter()
    fails = _in_child(_run_cases, kind, files, workdir)
    counts = json.loads(fails.pop()[len("outcomes "):]) if fails and fails[-1].startswith("outcomes ") else {}
    print(kind, counts)
    assert counts.get("refused", 0) > CASES[kind] // 2, counts  # the fuzzer damages most files
    assert not fails, f"{len(fails)} of {CASES[kind]} {kind} cases failed:\n" + "\n".join(fails[:20])
    assert time.perf_counter() - t < 30


def test_the_mutations_are_not_all_refused_the_same_way(fuzz_files):
    """A sanity check of the fuzzer itself: it produces files that load (intact checked bytes) as
    well as files that are refused, so that the test above can fail both ways."""
    files, workdir = fuzz_files
    rng = np.random.default_rng(SEED)
    raw = open(files["packed"], "rb").read()
    load = readers()["packed"]
    outcomes = set()
    for _ in range(200):
        data, _ = _mutate(rng, raw)
        p = os.path.join(workdir, "sanity.st")
        with open(p, "wb") as f:
            f.write(data)
        try:
            load(p)
            outcomes.add("loaded")
        except FormatError:
            outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}
