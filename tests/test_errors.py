"""Bad input to the kernels and settings: a clear exception, never a crash or a wrong answer."""
import os
import subprocess
import sys

import numpy as np
import pytest

import bitttt
from bitttt import PackedTernary


@pytest.fixture
def p(rng):
    return PackedTernary.quantize(rng.standard_normal((8, 300)).astype(np.float32))


def test_wrong_dtype(p, rng):
    x = rng.standard_normal((2, 300))
    with pytest.raises(TypeError, match="float32"):
        bitttt.bitlinear(p, x)
    with pytest.raises(TypeError, match="float32"):
        bitttt.matmul(p, x)
    with pytest.raises(TypeError, match="float32"):
        bitttt.quantize_activations(x)
    with pytest.raises(TypeError, match="int8"):
        bitttt.dot_i8(p, x.astype(np.int16))
    xq, a = bitttt.quantize_activations(x.astype(np.float32))
    with pytest.raises(TypeError, match="float32"):
        bitttt.gemm_i8(p, xq, a.astype(np.float64))
    with pytest.raises(TypeError, match="ndarray"):
        bitttt.bitlinear(p, [[0.0] * 300])
    with pytest.raises(TypeError, match="PackedTernary"):
        bitttt.bitlinear(np.ones((8, 300), np.float32), x.astype(np.float32))


def test_wrong_shape(p, rng):
    with pytest.raises(ValueError, match="301 features.*needs 300"):
        bitttt.bitlinear(p, rng.standard_normal((2, 301)).astype(np.float32))
    with pytest.raises(ValueError, match="needs 8"):
        bitttt.matmul_t(p, rng.standard_normal((2, 300)).astype(np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        bitttt.matmul(p, rng.standard_normal((2, 2, 300)).astype(np.float32))
    xq, a = bitttt.quantize_activations(rng.standard_normal((3, 300)).astype(np.float32))
    with pytest.raises(ValueError, match="one scale per token"):
        bitttt.gemm_i8(p, xq, a[:2])


def test_non_contiguous(p, rng):
    x = rng.standard_normal((300, 4)).astype(np.float32).T
    with pytest.raises(ValueError, match="C-contiguous"):
        bitttt.bitlinear(p, x)
    with pytest.raises(ValueError, match="C-contiguous"):
        bitttt.matmul(p, x)
    with pytest.raises(ValueError, match="C-contiguous"):
        bitttt.quantize_activations(x)
    with pytest.raises(ValueError, match="C-contiguous"):
        bitttt.dot_i8(p, np.zeros((2, 600), np.int8)[:, ::2])


def test_empty(p):
    for shape in [(0, 300), (0,)]:
        with pytest.raises(ValueError, match="empty"):
            bitttt.bitlinear(p, np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="empty"):
        bitttt.quantize_activations(np.zeros((3, 0), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_activations(kernel, p, rng, bad):
    for col in (17, 299):  # in the SIMD body and in the tail
        x = rng.standard_normal((3, 300)).astype(np.float32)
        x[1, col] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            bitttt.quantize_activations(x)
        with pytest.raises(ValueError, match="NaN or infinity"):
            bitttt.bitlinear(p, x)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan])
def test_bad_activation_scales(p, rng, bad):
    xq, a = bitttt.quantize_activations(rng.standard_normal((3, 300)).astype(np.float32))
    a[1] = bad
    with pytest.raises(ValueError, match="positive and finite"):
        bitttt.gemm_i8(p, xq, a)


def test_settings_validation(threads):
    with pytest.raises(ValueError, match="unknown kernel"):
        bitttt.set_kernel("neon")
    with pytest.raises(ValueError, match=">= 1"):
        bitttt.set_num_threads(0)
    with pytest.raises(TypeError):
        bitttt.set_num_threads(1.5)
    bitttt.set_num_threads(3)
    assert bitttt.get_num_threads() == 3


def _run(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)


def test_environment_forces_kernel_and_threads():
    r = _run("import bitttt; print(bitttt.get_kernel(), bitttt.get_num_threads())",
             BITTTT_KERNEL="scalar", BITTTT_NUM_THREADS="3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar", "3"]
    r = _run("import bitttt", BITTTT_KERNEL="sse9")
    assert r.returncode != 0 and "BITTTT_KERNEL" in r.stderr and "unknown kernel" in r.stderr
    r = _run("import bitttt", BITTTT_NUM_THREADS="many")
    assert r.returncode != 0 and "BITTTT_NUM_THREADS" in r.stderr


def test_unsupported_kernel_is_refused():
    missing = [k for k in ("avx2", "avx512") if k not in bitttt.available_kernels()]
    if not missing:
        pytest.skip("this CPU supports every kernel path")
    with pytest.raises(ValueError, match="not supported"):
        bitttt.set_kernel(missing[0])
