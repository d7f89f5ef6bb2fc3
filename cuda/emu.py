"""The emulated GPU device of the tests: cuda/*.cu built for the CPU through cuda/emu.h.

    dev = EmuDevice(build_dir)            # compiles the library once per source version (g++)
    bitttt.backend.cuda.use_device(dev)   # every op of the cuda backend now runs the emulated kernels

EmuDevice has PyCudaDevice's methods (bitttt/backend/cuda.py): device memory is host memory
(64-byte aligned NumPy buffers), a launch runs the kernel's wrapper `emu_<name>` with the
grid and block, every block in turn on blockDim threads.  Kernel signatures come from the
committed PTX headers, so a PTX whose signature disagrees with its source fails here too.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (cuda/build.py, beside this file)

_CT = {"P": ctypes.c_void_p, "i": ctypes.c_int32, "q": ctypes.c_int64, "f": ctypes.c_float, "d": ctypes.c_double}
_PY = {"P": int, "i": int, "q": int, "f": float, "d": float}
ERRORS = {1: "bad launch configuration", 2: "could not start the block's threads",
          3: "divergent barrier: threads of a block wait at barriers that can never all be reached "
             "(__syncthreads or a warp barrier not reached by every live thread)"}


class EmuLaunchError(RuntimeError):
    pass


class _Mem:
    """Device memory of the emulation: an aligned host buffer."""

    __slots__ = ("buf", "ptr", "nbytes")

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.buf = np.empty(self.nbytes + 64, np.uint8)
        off = (-self.buf.ctypes.data) % 64
        self.buf = self.buf[off:off + max(self.nbytes, 1)]
        self.ptr = self.buf.ctypes.data


class EmuDevice:
    name = "emu"
    label = "emulated GPU (cuda/emu.h on CPU threads)"

    def __init__(self, build_dir, extra_source: str = "", tag: str = "kernels", kernels: bool = True):
        self.build_dir = Path(build_dir)
        self.lib = ctypes.CDLL(str(build.build_emu(build_dir, extra_source, tag, kernels)))
        self.sigs = {}
        for text in [cu.read_text() for cu in build.sources() if kernels] + [extra_source]:
            for name, (sig, _) in build.kernel_signatures(text).items():
                self.sigs[name] = sig
        self.launches = 0
        self._fns = {}

    def signature(self, kernel: str) -> str:
        return self.sigs[kernel]

    def alloc(self, nbytes: int) -> _Mem:
        return _Mem(nbytes)

    @staticmethod
    def ptr(mem: _Mem) -> int:
        return mem.ptr

    def htod(self, mem: _Mem, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        mem.buf[:host.nbytes] = host.reshape(-1).view(np.uint8)

    def dtoh(self, host: np.ndarray, mem: _Mem) -> None:
        host.reshape(-1).view(np.uint8)[...] = mem.buf[:host.nbytes]

    def zero(self, mem: _Mem, nbytes: int) -> None:
        mem.buf[:nbytes] = 0

    def _fn(self, kernel: str, sig: str):
        fn = self._fns.get(kernel)
        if fn is None:
            fn = getattr(self.lib, "emu_" + kernel)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_uint] * 6 + [_CT[c] for c in sig]
            self._fns[kernel] = fn
        return fn

    def launch(self, kernel: str, grid: tuple, block: tuple, args: tuple, sig: str | None = None) -> None:
        sig = sig or self.sigs[kernel]
        if len(args) != len(sig):
            raise TypeError(f"{kernel}: {len(args)} arguments for signature {sig}")
        conv = [_PY[c](a) for c, a in zip(sig, args)]
        err = self._fn(kernel, sig)(*grid, *block, *conv)
        self.launches += 1
        if err:
            raise EmuLaunchError(f"{kernel} grid={grid} block={block}: {ERRORS.get(err, err)}")

    def synchronize(self) -> None:
        pass

    def memory(self) -> tuple[int, int]:
        return (0, 0)
