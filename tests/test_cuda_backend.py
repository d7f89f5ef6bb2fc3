"""The cuda backend without a GPU: importing bitttt and every CPU path never touch pycuda; each
failure (no pycuda, no driver, no device, a PTX that does not load, out of memory) is a clear
error naming its cause; `--device cuda` falls back to the CPU with a warning for inference and
evaluation, and stops training before anything is written.

The failures are produced by a stand-in `pycuda.driver` module installed in sys.modules (the
real pycuda is absent here), so PyCudaDevice's own error handling is what runs."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bitttt.backend import cuda as cb
from bitttt.backend import get

ROOT = Path(__file__).resolve().parent.parent
NO_PYCUDA = "import sys; sys.modules['pycuda'] = None; sys.modules['pycuda.driver'] = None\n"


def run_py(code: str, *args: str, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout)


def test_import_and_cpu_paths_never_touch_pycuda():
    # an import hook that fails the run on any attempt to import pycuda
    code = ("import sys\n"
            "class Guard:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'pycuda':\n"
            "            raise AssertionError('pycuda imported')\n"
            "sys.meta_path.insert(0, Guard())\n"
            "import numpy as np, bitttt\n"
            "from bitttt import BitLlama, BitLlamaConfig\n"
            "from bitttt.backend import cuda\n"  # importing the backend module opens nothing
            "cfg = BitLlamaConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24,"
            " mini_batch_size=4)\n"
            "m = BitLlama(cfg); t = np.arange(8)[None] % 32\n"
            "loss, g = m.loss_and_grads(t[:, :-1], t[:, 1:])\n"
            "print(bitttt.load('bitttt/models/' + [f for f in __import__('os').listdir('bitttt/models')"
            " if f.endswith('.safetensors')][0]).generate('Once', max_tokens=3, seed=1) is not None)\n"
            "assert cuda._DEVICE is None and 'pycuda' not in sys.modules\n"
            "print('ok', loss > 0)\n")
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert "ok True" in r.stdout


def test_same_op_set_as_the_other_backends():
    import inspect

    from bitttt.backend import OPS
    from bitttt.backend import numpy as ref

    assert cb.NAME == "cuda" and cb.DTYPE == np.float32
    for op in OPS:
        assert list(inspect.signature(getattr(cb, op)).parameters) == \
            list(inspect.signature(getattr(ref, op)).parameters), op
    assert callable(cb.fused_decoder)
    assert set(cb.HOST_OPS) <= set(OPS)


class FakeDriver(types.ModuleType):
    """A stand-in for pycuda.driver with a switch per failure."""

    class Error(Exception):
        pass

    class MemoryError(Error):
        pass

    def __init__(self, fail: str | None = None):
        super().__init__("pycuda.driver")
        self.fail = fail
        drv = self

        class Device:
            @staticmethod
            def count():
                return 0 if drv.fail == "no-device" else 1

            def __init__(self, i):
                pass

            def name(self):
                return "Fake GPU"

            def compute_capability(self):
                return (9, 0)

            def retain_primary_context(self):
                return types.SimpleNamespace(push=lambda: None, pop=lambda: None)

        self.Device = Device

    def init(self):
        if self.fail == "no-driver":
            raise RuntimeError("cuInit failed: unknown error")
        if self.fail == "no-device-init":
            raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    def module_from_buffer(self, data):
        if self.fail == "ptx-load":
            raise self.Error("cuModuleLoadData failed: a PTX JIT compilation failed")
        fn = types.SimpleNamespace(prepare=lambda sig: None)
        return types.SimpleNamespace(get_function=lambda name: fn)

    def mem_alloc(self, n):
        if self.fail == "out-of-memory":
            raise self.MemoryError("cuMemAlloc failed: out of memory")
        return 4096

    def mem_get_info(self):
        return (1 << 20, 80 << 30)

    class Stream:
        handle = 0

        def synchronize(self):
            pass


@pytest.fixture
def fake_pycuda(monkeypatch):
    def install(fail=None):
        drv = FakeDriver(fail)
        pkg = types.ModuleType("pycuda")
        pkg.driver = drv
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
        monkeypatch.setitem(sys.modules, "pycuda.tools", None)  # no memory pool: plain mem_alloc
        monkeypatch.setattr(cb, "_DEVICE", None)
        return drv

    yield install
    cb._DEVICE = None


@pytest.mark.parametrize("fail,words", [("no-driver", "driver could not be initialised"),
                                        ("no-device", "found no GPU"),
                                        ("no-device-init", "found no GPU"),
                                        ("ptx-load", "did not load")])
def test_each_failure_names_its_cause(fake_pycuda, fail, words):
    fake_pycuda(fail)
    with pytest.raises(cb.CudaUnavailable, match=words) as e:
        get("cuda")
    assert e.value.cause == fail.replace("-init", "")
    ok, why = cb.available()
    assert not ok and words in why


def test_no_pycuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr(cb, "_DEVICE", None)
    with pytest.raises(cb.CudaUnavailable, match=r"pip install 'bitttt\[cuda\]'") as e:
        get("cuda")
    assert e.value.cause == "no-pycuda"
    from bitttt import BitLlama, BitLlamaConfig

    with pytest.raises(RuntimeError, match="needs pycuda"):  # the API: BitLlama(cfg, backend="cuda")
        BitLlama(BitLlamaConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24),
                 backend="cuda")


def test_pycuda_without_a_driver_library(monkeypatch):
    class Finder:  # pycuda installed, libcuda.so.1 absent: its import fails like this
        def find_spec(self, name, path=None, target=None):
            if name == "pycuda.driver" or name == "pycuda":
                raise ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")

    for m in ("pycuda", "pycuda.driver"):
        monkeypatch.delitem(sys.modules, m, raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder()] + sys.meta_path)
    monkeypatch.setattr(cb, "_DEVICE", None)
    with pytest.raises(cb.CudaUnavailable, match="could not load the CUDA driver") as e:
        cb.device()
    assert e.value.cause == "no-driver"


def test_out_of_memory_names_sizes(fake_pycuda):
    fake_pycuda("out-of-memory")
    dev = cb.device()
    assert dev.label == "Fake GPU (sm_90)"
    with pytest.raises(cb.CudaUnavailable, match=r"out of GPU memory: 64\.0 MiB asked, 1 of 81920 MiB free") as e:
        cb.DeviceArray((16, 1 << 20), np.float32)
    assert e.value.cause == "out-of-memory"


def test_a_working_device_loads_every_kernel(fake_pycuda):
    fake_pycuda()
    dev = cb.device()
    assert set(dev.funcs) == set(cb.read_ptx_kernels())
    assert {"gemv_i8", "gemm_i8", "quantize_act", "ttt_step", "adamw_f"} <= set(dev.funcs)


# -- the commands -----------------------------------------------------------------------------------
def cli(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    code = NO_PYCUDA + f"import runpy; sys.argv = ['{module}'] + sys.argv[1:]; runpy.run_module('{module}', " \
                       "run_name='__main__')"
    return run_py(code, *args, cwd=cwd)


def test_infer_falls_back_to_cpu_with_a_warning():
    r = cli("bitttt.infer", "--device", "cuda", "-p", "Once upon a time", "-n", "4", "-s", "1", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert "warning: CUDA is not available (no-pycuda)" in r.stderr and "running on the CPU" in r.stderr
    assert r.stdout.startswith("Once upon a time") and len(r.stdout.strip()) > len("Once upon a time")


def test_eval_falls_back_to_cpu_with_a_warning(tmp_path):
    from bitttt.infer import SHIPPED_MODEL

    data = tmp_path / "v.txt"
    data.write_text("Once upon a time there was a cat.")
    r = cli("bitttt.eval", "-m", SHIPPED_MODEL, "--data", str(data), "--device", "cuda")
    assert r.returncode == 0, r.stderr
    assert "CUDA is not available (no-pycuda)" in r.stderr and "perplexity" in r.stdout


def test_train_on_a_missing_gpu_stops_before_writing(tmp_path):
    r = cli("bitttt.train", "--device", "cuda", "name=gpu", f"out_dir={tmp_path / 'runs'}", "max_steps=2",
            cwd=tmp_path)
    assert r.returncode == 2
    assert "error: --device cuda: CUDA is not available (no-pycuda)" in r.stderr
    assert list(tmp_path.iterdir()) == []
