"""Bad values refused with a clear message: thread counts, the BITTTT_* variables, a packed matrix
whose shape is changed after it was checked (issue 21, point 5)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bitttt

REPO = Path(__file__).resolve().parents[1]


def test_thread_counts_out_of_range(threads):
    for bad in (0, 10**10, bitttt.runtime.MAX_THREADS + 1):
        with pytest.raises(ValueError, match="number of threads"):
            bitttt.set_num_threads(bad)
    bitttt.set_num_threads(2)
    assert bitttt.get_num_threads() == 2


def test_infer_with_an_absurd_thread_count_is_one_line():
    r = subprocess.run([sys.executable, "-m", "bitttt.infer", "-p", "hi", "-n", "2", "-t", "10000000000"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "number of threads" in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["many", "1e3", "-2", "99999999999"])
def test_bad_thread_variable_names_itself(value):
    env = dict(os.environ, BITTTT_NUM_THREADS=value)
    r = subprocess.run([sys.executable, "-c", "import bitttt"], env=env, capture_output=True, text=True, timeout=60)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and f"BITTTT_NUM_THREADS={value!r}" in last and "whole number" in last or \
        "number of threads" in last, last


def test_packed_matrix_shape_cannot_change():
    p = bitttt.PackedTernary.quantize(np.ones((4, 300), np.float32))
    for name, value in (("cols", 100000), ("rows", 9), ("codes", np.zeros((1, 64), np.uint8)), ("scale", 2.0)):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(p, name, value)
    assert p.shape == (4, 300)
    x = np.ones(300, np.float32)
    assert np.allclose(bitttt.bitlinear(p, x), p.dequantize() @ x, rtol=2e-2)
