"""The `cuda` backend: the ops of `bitttt.backend.numpy` in float32 on NVIDIA GPUs, from PTX.

The kernels are cuda/*.cu, compiled once to PTX (bitttt/cuda_ptx/*.ptx, shipped in the wheel:
no CUDA compiler is needed) and loaded with pycuda (`pip install "bitttt[cuda]"`); the driver
JIT-compiles them for the card (compute_80 PTX: Ampere and newer, driver R525 or newer).
Importing this module touches nothing; the device is opened by the first op (or `device()`).

Data flow.  The model's own code (bitttt/model.py, the layers) works on host NumPy arrays, so
each op takes host arrays and returns host arrays: its inputs go to the GPU, its kernels run
there, its result comes back.  What is reused stays on the GPU: packed ternary weights are
uploaded once per matrix (`GpuTernary`, or a resident copy of a `PackedTernary` read from a
file), the int8 activation codes of `quantize_act` stay on the GPU for the q/k/v (gate/up)
products and for dW, the norms keep their inputs there for the backward.  Decoding
(BitLlama.step) runs on `GpuDecoder`: every weight and the TTT state resident, 10 launches per
layer.

Results: the int8 paths (quantize_act, qlinear, the int8 LM head) give the cpu backend's bits;
the float ops agree to float32 rounding (sums in another order).  The few ops that are not GPU
kernels run on the host (see HOST_OPS).

Failures raise `CudaUnavailable` naming the cause (`cause`: "no-pycuda", "no-driver",
"no-device", "ptx-load", "out-of-memory").  Tests run every kernel through an emulated device
(cuda/emu.py: the same sources built for the CPU) installed with `use_device`.
"""
from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..ternary import FORMATS as FMTS
from ..ternary import PackedTernary
from . import numpy as ref

NAME = "cuda"
DTYPE = np.dtype(np.float32)
LN_EPS = ref.LN_EPS
PTX_DIR = Path(__file__).resolve().parent.parent / "cuda_ptx"
# Ops computed on the host (NumPy or the cpu backend's C code), and why.
HOST_OPS = {
    "quantize_weight": "absmean scale and packing once per weight (the packed matrix is then uploaded once)",
    "rope_tables": "cos/sin tables (NumPy, float32)",
    "embedding_forward": "the row gather: the table is one of the model's host arrays, and a few rows "
                         "cost less to gather than the table to upload (the embed_fwd kernel is there and tested)",
    "attention_forward": "causal GQA attention: the cpu backend's C kernel on the host (no GPU kernel yet)",
    "attention_backward": "the cpu backend's C kernel on the host (no GPU kernel yet)",
    "attention_cached": "prefill/decode against the KV cache, which lives on the host: the cpu backend's C kernel",
}


def _on_host(name: str):
    """The cpu backend's op `name` (its arrays are host NumPy arrays, as this backend's per-op inputs are)."""
    def op(*args, **kwargs):
        from . import cpu

        return getattr(cpu, name)(*args, **kwargs)

    import inspect

    op.__name__ = name
    op.__doc__ = f"{name} on the host through the cpu backend (HOST_OPS)."
    op.__signature__ = inspect.signature(getattr(ref, name))  # the op set's signature
    return op


attention_forward = _on_host("attention_forward")
attention_backward = _on_host("attention_backward")
attention_cached = _on_host("attention_cached")

rope_tables = ref.rope_tables
TTTGrads = ref.TTTGrads
Int8Head = ref.Int8Head


class CudaUnavailable(RuntimeError):
    """The GPU backend cannot run here; `cause` says why (see the module docstring)."""

    def __init__(self, cause: str, message: str):
        super().__init__(message)
        self.cause = cause


# -- the device --------------------------------------------------------------------------------
def read_ptx_kernels(ptx_dir: Path = PTX_DIR) -> dict[str, tuple[Path, str]]:
    """kernel name -> (PTX file, argument signature: P pointer, i int32, q int64, f float32, d double),
    from the comment lines cuda/build.py writes at the top of each PTX."""
    out = {}
    for p in sorted(Path(ptx_dir).glob("*.ptx")):
        with open(p) as f:
            for line in f:
                if not line.startswith("// bitttt"):
                    break
                if line.startswith("// bitttt-kernel:"):
                    name, sig = line.split(":", 1)[1].split()
                    out[name] = (p, sig)
    return out


class PyCudaDevice:
    """One GPU through pycuda: the primary context of device `ordinal`, every PTX module loaded."""

    name = "cuda"

    def __init__(self, ordinal: int = 0):
        try:
            import pycuda.driver as drv
        except ImportError as e:
            if "libcuda" in str(e):  # pycuda is there, the driver library is not
                raise CudaUnavailable("no-driver", f"pycuda could not load the CUDA driver ({e}): is an NVIDIA "
                                      "driver installed (nvidia-smi)?") from e
            raise CudaUnavailable("no-pycuda", f"the cuda backend needs pycuda ({e}): pip install 'bitttt[cuda]' "
                                  "on a machine with an NVIDIA driver") from e
        self.drv = drv
        try:
            drv.init()
        except Exception as e:  # pycuda raises its own RuntimeError/LogicError kinds here
            if "no CUDA-capable device" in str(e):
                raise CudaUnavailable("no-device", f"the CUDA driver found no GPU ({e})") from e
            raise CudaUnavailable("no-driver", f"the CUDA driver could not be initialised ({e}): is an NVIDIA "
                                  "driver installed and loaded (nvidia-smi)?") from e
        if drv.Device.count() == 0:
            raise CudaUnavailable("no-device", "the CUDA driver found no GPU")
        if ordinal >= drv.Device.count():
            raise CudaUnavailable("no-device", f"GPU {ordinal} does not exist ({drv.Device.count()} found)")
        self.dev = drv.Device(ordinal)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        atexit.register(self._close)
        self.label = f"{self.dev.name()} (sm_{''.join(map(str, self.dev.compute_capability()))})"
        self.funcs = {}
        modules = {}
        for name, (path, sig) in read_ptx_kernels().items():
            if path not in modules:
                try:
                    modules[path] = drv.module_from_buffer(path.read_bytes())
                except drv.Error as e:
                    raise CudaUnavailable("ptx-load", f"{path.name} did not load on {self.label}: {e} (the PTX "
                                          "is compute_80 / ISA 8.0: it needs an NVIDIA driver R525 or newer and "
                                          "a GPU of compute capability 8.0 or more)") from e
            f = modules[path].get_function(name)
            f.prepare(sig)
            self.funcs[name] = f
        if not self.funcs:
            raise CudaUnavailable("ptx-load", f"no PTX kernels found in {PTX_DIR}")
        self.stream = drv.Stream()  # a blocking stream: ordered with the synchronous copies of the legacy stream
        self._cu = None
        try:  # every op allocates its outputs: a pool keeps freed blocks for reuse (cuMemAlloc is slow)
            from pycuda.tools import DeviceMemoryPool

            self._alloc = DeviceMemoryPool().allocate
        except Exception:
            self._alloc = drv.mem_alloc

    def _close(self) -> None:
        try:
            self.ctx.pop()
        except Exception:
            pass

    def alloc(self, nbytes: int):
        try:
            return self._alloc(max(int(nbytes), 1))
        except self.drv.MemoryError as e:
            free, total = self.drv.mem_get_info()
            raise CudaUnavailable("out-of-memory", f"out of GPU memory: {nbytes / 2**20:.1f} MiB asked, "
                                  f"{free / 2**20:.0f} of {total / 2**20:.0f} MiB free on {self.label}") from e

    @staticmethod
    def ptr(mem) -> int:
        return int(mem)

    def htod(self, mem, host: np.ndarray) -> None:
        self.drv.memcpy_htod(mem, np.ascontiguousarray(host))

    def dtoh(self, host: np.ndarray, mem) -> None:
        self.drv.memcpy_dtoh(host, mem)

    def zero(self, mem, nbytes: int) -> None:
        self.drv.memset_d8(mem, 0, int(nbytes))

    def launch(self, kernel: str, grid: tuple, block: tuple, args: tuple) -> None:
        self.funcs[kernel].prepared_async_call(grid, block, self.stream, *args)

    def _driver(self):
        if self._cu is None:
            import ctypes

            self._cu = ctypes.CDLL("libcuda.so.1")
        return self._cu

    def graph_capture(self, fn):
        """The kernel launches of fn() captured into an instantiated CUDA graph (driver API through
        ctypes: pycuda has no stream capture)."""
        import ctypes

        cu, h = self._driver(), ctypes.c_void_p(self.stream.handle)

        def check(rc, what):
            if rc != 0:
                raise RuntimeError(f"{what} failed (CUresult {rc})")

        check(cu.cuStreamBeginCapture_v2(h, ctypes.c_int(2)), "cuStreamBeginCapture")  # mode: relaxed
        graph = ctypes.c_void_p()
        try:
            fn()
        finally:
            rc = cu.cuStreamEndCapture(h, ctypes.byref(graph))
        check(rc, "cuStreamEndCapture")
        exe = ctypes.c_void_p()
        check(cu.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)), "cuGraphInstantiate")
        cu.cuGraphDestroy(graph)
        return exe

    def graph_launch(self, exe) -> None:
        import ctypes

        rc = self._driver().cuGraphLaunch(exe, ctypes.c_void_p(self.stream.handle))
        if rc != 0:
            raise RuntimeError(f"cuGraphLaunch failed (CUresult {rc})")

    def synchronize(self) -> None:
        self.stream.synchronize()
        self.drv.Context.synchronize()

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes of GPU memory."""
        return self.drv.mem_get_info()


_DEVICE = None


def device():
    """The device the ops run on: opened on first use (pycuda; BITTTT_CUDA_DEVICE picks the GPU), or
    the one given to use_device.  BITTTT_CUDA_EMU=DIR (tests, a source checkout with g++): the
    emulated build of cuda/*.cu, compiled into DIR, instead of a GPU."""
    global _DEVICE
    if _DEVICE is None:
        emu_dir = os.environ.get("BITTTT_CUDA_EMU")
        if emu_dir:
            src = Path(__file__).resolve().parents[2] / "cuda"
            if not (src / "emu.py").exists():
                raise CudaUnavailable("no-device", f"BITTTT_CUDA_EMU is set but {src} (the kernel sources) is absent")
            sys.path.insert(0, str(src))
            import emu

            _DEVICE = emu.EmuDevice(emu_dir)
        else:
            _DEVICE = PyCudaDevice(int(os.environ.get("BITTTT_CUDA_DEVICE", "0")))
    return _DEVICE


def use_device(dev) -> Any:
    """Run the ops on `dev` (an object with PyCudaDevice's methods, e.g. cuda/emu.py's EmuDevice);
    None: back to the GPU opened on first use.  Returns the previous device."""
    global _DEVICE
    old, _DEVICE = _DEVICE, dev
    _WEIGHTS.clear()
    return old


def available() -> tuple[bool, str]:
    """(True, device label) when the GPU opens, else (False, the reason)."""
    try:
        d = device()
    except CudaUnavailable as e:
        return False, str(e)
    return True, getattr(d, "label", d.name)


# -- device arrays -----------------------------------------------------------------------------
class DeviceArray:
    """An array in device memory: shape, dtype, the allocation (freed with the object), `ptr`."""

    __slots__ = ("mem", "ptr", "shape", "dtype", "nbytes")

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        dev = device()
        self.mem = dev.alloc(self.nbytes)
        self.ptr = dev.ptr(self.mem)

    @classmethod
    def from_host(cls, a: np.ndarray, dtype=None) -> DeviceArray:
        a = np.ascontiguousarray(a, dtype=dtype)
        d = cls(a.shape, a.dtype)
        if a.nbytes:
            device().htod(d.mem, a)
        return d

    @classmethod
    def zeros(cls, shape, dtype) -> DeviceArray:
        d = cls(shape, dtype)
        device().zero(d.mem, d.nbytes)
        return d

    def get(self, out: np.ndarray | None = None) -> np.ndarray:
        """A host copy (into `out`, C-contiguous of this shape and dtype, when given)."""
        h = np.empty(self.shape, self.dtype) if out is None else out
        if self.nbytes:
            device().dtoh(h, self.mem)
        return h

    def set(self, a: np.ndarray) -> None:
        device().htod(self.mem, np.ascontiguousarray(a, dtype=self.dtype).reshape(self.shape))


def _up(a, dtype=np.float32) -> DeviceArray:
    return a if isinstance(a, DeviceArray) else DeviceArray.from_host(a, dtype)


def _launch(kernel: str, grid, block, *args) -> None:
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
    device().launch(kernel, grid, block, tuple(a.ptr if isinstance(a, DeviceArray) else a for a in args))


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


NULL = 0


# -- dense products ----------------------------------------------------------------------------
def _sgemm(a, b, m: int, n: int, p: int, lda: int, ldb: int, trans_a: bool, trans_b: bool) -> DeviceArray:
    c = DeviceArray((m, n), np.float32)
    _launch("sgemm", (_cdiv(n, 64), _cdiv(m, 64)), (256,), np.int32(m), np.int32(n), np.int32(p), _up(a),
            np.int32(lda), np.int32(trans_a), _up(b), np.int32(ldb), np.int32(trans_b), c, np.int32(n))
    return c


def matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """op(a) @ op(b) for 2-D float32 arrays (the sgemm kernel)."""
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    m, p = (a.shape[1], a.shape[0]) if trans_a else a.shape
    pb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if p != pb:
        raise ValueError(f"matmul: inner dimensions differ ({a.shape}, {b.shape}, trans_a={trans_a}, "
                         f"trans_b={trans_b})")
    return _sgemm(a, b, m, n, p, a.shape[1], b.shape[1], trans_a, trans_b).get()


# -- BitLinear -----------------------------------------------------------------------------------
class GpuTernary(PackedTernary):
    """A PackedTernary with its codes and scale resident on the GPU (`dcodes`, `dscale`)."""

    __slots__ = ("dcodes", "dscale")

    @classmethod
    def of(cls, p: PackedTernary) -> GpuTernary:
        p = p.to_format("t2")  # the CUDA kernels read 2-bit codes: a 1.6-bit matrix is unpacked once
        g = cls.__new__(cls)
        g.codes, g.scale, g.rows, g.cols, g.format = p.codes, p.scale, p.rows, p.cols, p.format
        g.dcodes = DeviceArray.from_host(p.codes)
        g.dscale = DeviceArray.from_host(np.array([p.scale], np.float32))
        g._frozen = True  # read-only from here on, as every PackedTernary
        return g


_WEIGHTS: dict[int, tuple[PackedTernary, GpuTernary]] = {}  # resident copies of PackedTernary from elsewhere


def resident(w: PackedTernary) -> GpuTernary:
    """w on the GPU: itself when it is a GpuTernary, else a copy uploaded once (kept while w lives
    in this table: weights read from a file for inference)."""
    if isinstance(w, GpuTernary):
        return w
    hit = _WEIGHTS.get(id(w))
    if hit is None or hit[0] is not w:
        hit = (w, GpuTernary.of(w))
        _WEIGHTS[id(w)] = hit
    return hit[1]


def quantize_weight(w: np.ndarray) -> GpuTernary:
    """Qw(W) packed at 2 bits per weight (on the host, src_c/ternary.c) and uploaded."""
    return GpuTernary.of(PackedTernary.quantize(w))


def is_quantized(w) -> bool:
    return isinstance(w, PackedTernary)


class QAct(NamedTuple):
    """Activation codes on the GPU: q int8 [M, ldq] (zeros past K), a float32 [M], sums int32 [M]."""

    q: DeviceArray
    a: DeviceArray
    sums: DeviceArray
    M: int
    K: int
    ldq: int

    def host(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes int8 [M, K], a float32 [M]): the cpu backend's quantize_act result."""
        return np.ascontiguousarray(self.q.get()[:, :self.K]), self.a.get()


def _ldq(k: int) -> int:
    return _cdiv(k, 256) * 256


def _quantize_dev(x: DeviceArray, m: int, k: int) -> QAct:
    ldq = _ldq(k)
    q, a, s = DeviceArray((m, ldq), np.int8), DeviceArray((m,), np.float32), DeviceArray((m,), np.int32)
    _launch("quantize_act", (m,), (256,), x, np.int32(k), np.int32(ldq), q, a, s)
    return QAct(q, a, s, m, k, ldq)


def quantize_act(x: np.ndarray) -> QAct:
    """x [M, K] -> QAct: Qa(x) = codes / a, per-token absmax, round half to even."""
    x = np.ascontiguousarray(x, np.float32)
    if not np.isfinite(x).all():
        raise ValueError("quantize_act: x contains NaN or infinity")
    m, k = x.shape
    return _quantize_dev(_up(x), m, k)


def _qlinear_dev(xq: QAct, w: GpuTernary) -> DeviceArray:
    if xq.K != w.cols:
        raise ValueError(f"qlinear: activations have {xq.K} features, the weight {w.cols}")
    y = DeviceArray((xq.M, w.rows), np.float32)
    if xq.M <= 4:  # decoding: one warp per weight row, the weights read once per token
        _launch("gemv_i8", (_cdiv(w.rows, 8), xq.M), (256,), w.dcodes, np.int32(w.rows), np.int32(xq.ldq),
                w.dscale, np.int32(w.rows), xq.q, xq.sums, xq.a, y, np.int32(w.rows))
    else:
        _launch("gemm_i8", (_cdiv(w.rows, 64), _cdiv(xq.M, 64)), (256,), w.dcodes, np.int32(w.rows),
                np.int32(xq.M), np.int32(xq.ldq), w.dscale, xq.q, xq.sums, xq.a, y, np.int32(w.rows))
    return y


def qlinear(xq: QAct, wq: PackedTernary) -> np.ndarray:
    """int8 x ternary products (dp4a), scaled: Qa(x) Qw(W)^T [M, N], the cpu backend's bits."""
    return _qlinear_dev(xq, resident(wq)).get()


def qlinear_dx(dy: np.ndarray, wq: PackedTernary) -> np.ndarray:
    """dY [M, N] @ Qw(W) -> [M, K], the codes decoded in the GEMM's tile loads."""
    w = resident(wq)
    dy = np.ascontiguousarray(dy, np.float32)
    m = dy.shape[0]
    dx = DeviceArray((m, w.cols), np.float32)
    _launch("ternary_dx", (_cdiv(w.cols, 64), _cdiv(m, 64)), (256,), np.int32(m), np.int32(w.rows),
            np.int32(w.cols), _up(dy), w.dcodes, np.int32(w.codes.shape[1]), np.float32(w.scale), dx)
    return dx.get()


def qlinear_dw(dy: np.ndarray, xq: QAct) -> np.ndarray:
    """dY^T [N, M] @ Qa(x) [M, K] -> [N, K], straight from the int8 codes on the GPU."""
    dy = np.ascontiguousarray(dy, np.float32)
    n = dy.shape[1]
    dw = DeviceArray((n, xq.K), np.float32)
    _launch("q8_dw", (_cdiv(xq.K, 64), _cdiv(n, 64)), (256,), np.int32(xq.M), np.int32(n), np.int32(xq.K),
            _up(dy), xq.q, np.int32(xq.ldq), xq.a, dw)
    return dw.get()


# -- norms -------------------------------------------------------------------------------------
COL_ROWS = 64  # ops.cu: rows per slab of the parameter-gradient sums


def _colsum(a: DeviceArray, b, rs, m: int, d: int, with_a: bool = False):
    slabs = _cdiv(m, COL_ROWS)
    pab = DeviceArray((slabs, d), np.float32)
    pa = DeviceArray((slabs, d), np.float32) if with_a else None
    _launch("col_partial", (_cdiv(d, 256), slabs), (256,), a, b if b is not None else NULL,
            rs if rs is not None else NULL, np.int32(m), np.int32(d), pab, pa if pa is not None else NULL)
    outs = []
    for part in (pab, pa) if with_a else (pab,):
        o = DeviceArray((d,), np.float32)
        _launch("col_finish", (_cdiv(d, 256),), (256,), part, np.int32(slabs), np.int32(d), o)
        outs.append(o.get())
    return outs


class RMSNormCache(NamedTuple):
    x: DeviceArray  # [M, D] on the GPU
    r: np.ndarray   # 1 / rms [M] (host: the model checks it)
    w: np.ndarray
    shape: tuple


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, RMSNormCache]:
    d = x.shape[-1]
    m = int(np.prod(x.shape[:-1], dtype=np.int64))
    dx_ = _up(np.ascontiguousarray(x, np.float32).reshape(m, d))
    y, r = DeviceArray((m, d), np.float32), DeviceArray((m,), np.float32)
    _launch("rmsnorm_fwd", (m,), (256,), dx_, _up(w), np.int32(d), np.float32(eps), y, r)
    return y.get().reshape(x.shape), RMSNormCache(dx_, r.get(), w, x.shape)


def rmsnorm_backward(dy: np.ndarray, c: RMSNormCache) -> tuple[np.ndarray, np.ndarray]:
    m, d = c.x.shape
    ddy, r = _up(np.ascontiguousarray(dy, np.float32).reshape(m, d)), _up(c.r)
    dx = DeviceArray((m, d), np.float32)
    _launch("rmsnorm_bwd", (m,), (256,), ddy, c.x, _up(c.w), r, np.int32(d), dx)
    (dw,) = _colsum(ddy, c.x, r, m, d)
    return dx.get().reshape(c.shape), dw


class LayerNormCache(NamedTuple):
    xh: DeviceArray  # [M, D]
    r: DeviceArray   # [M]
    w: np.ndarray
    shape: tuple


def layernorm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, LayerNormCache]:
    """x [..., D], w and b [D]."""
    d = x.shape[-1]
    m = int(np.prod(x.shape[:-1], dtype=np.int64))
    y, xh, r = DeviceArray((m, d), np.float32), DeviceArray((m, d), np.float32), DeviceArray((m,), np.float32)
    _launch("layernorm_fwd", (m,), (256,), _up(np.ascontiguousarray(x, np.float32).reshape(m, d)), _up(w), _up(b),
            np.int32(d), np.float32(eps), y, xh, r)
    return y.get().reshape(x.shape), LayerNormCache(xh, r, w, x.shape)


def layernorm_backward(dy: np.ndarray, c: LayerNormCache, reduce_axes=None):
    """dw and db summed over every row (as the cpu backend)."""
    if reduce_axes is not None:
        raise ValueError("the cuda backend's layernorm_backward sums dw and db over all rows")
    m, d = c.xh.shape
    ddy = _up(np.ascontiguousarray(dy, np.float32).reshape(m, d))
    dx = DeviceArray((m, d), np.float32)
    _launch("layernorm_bwd", (m,), (256,), ddy, c.xh, _up(c.w), c.r, np.int32(d), dx)
    dw, db = _colsum(ddy, c.xh, None, m, d, with_a=True)
    return dx.get().reshape(c.shape), dw, db


# -- gates ----------------------------------------------------------------------------------------
def _elementwise(kernel: str, n: int, *args) -> None:
    _launch(kernel, (max(1, _cdiv(n, 256)),), (256,), *args)


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.ascontiguousarray(z, np.float32)
    out = DeviceArray(z.shape, np.float32)
    _elementwise("sigmoid_f", z.size, _up(z), np.int64(z.size), out)
    return out.get()


def swiglu_forward(g: np.ndarray, u: np.ndarray, keep_sg: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (h, sigmoid(g)); sigmoid(g) is not copied back without keep_sg (the backward recomputes it)."""
    g, u = np.ascontiguousarray(g, np.float32), np.ascontiguousarray(u, np.float32)
    h, sg = DeviceArray(g.shape, np.float32), DeviceArray(g.shape, np.float32)
    _elementwise("swiglu_fwd", g.size, _up(g), _up(u), np.int64(g.size), h, sg)
    return h.get(), (sg.get() if keep_sg else None)


def swiglu_backward(dh: np.ndarray, g: np.ndarray, u: np.ndarray,
                    sg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """sg None: recomputed by the forward kernel (the same bits)."""
    if sg is None:
        _, sg = swiglu_forward(g, u)
    dg, du = DeviceArray(g.shape, np.float32), DeviceArray(g.shape, np.float32)
    _elementwise("swiglu_bwd", g.size, _up(dh), _up(g), _up(u), _up(sg), np.int64(g.size), dg, du)
    return dg.get(), du.get()


# -- RoPE ---------------------------------------------------------------------------------------------
def rope_apply(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, inverse: bool = False) -> np.ndarray:
    """x [..., f] rotated pairwise; cos/sin broadcast against x[..., 0::2] (as the numpy backend)."""
    x = np.ascontiguousarray(x, np.float32)
    half = x.shape[:-1] + (x.shape[-1] // 2,)
    c = np.ascontiguousarray(np.broadcast_to(cos, half), np.float32)
    s = np.ascontiguousarray(np.broadcast_to(sin, half), np.float32)
    out = DeviceArray(x.shape, np.float32)
    n = c.size
    _elementwise("rope_f", n, _up(x), _up(c), _up(s), np.int64(n), np.int32(bool(inverse)), out)
    return out.get()


# -- embedding -----------------------------------------------------------------------------------------
def embedding_forward(w: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids [B, T] -> rows of w, gathered on the host (see HOST_OPS)."""
    return w[ids]


def embedding_backward(dx: np.ndarray, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """dx [B, T, D] -> dW [V, D] by a scatter-add on the GPU (atomic adds: repeated ids sum in any order)."""
    d = dx.shape[-1]
    flat = np.ascontiguousarray(ids, np.int64).reshape(-1)
    dw = DeviceArray.zeros((vocab_size, d), np.float32)
    if flat.size:
        _launch("embed_bwd", (flat.size,), (256,), _up(np.ascontiguousarray(dx, np.float32).reshape(-1, d)),
                _up(flat, np.int64), np.int32(d), dw)
    return dw.get()


# -- softmax cross-entropy ------------------------------------------------------------------------------
class XentCache(NamedTuple):
    dlogits: np.ndarray  # the gradient, computed with the loss


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, m: np.ndarray, total, overwrite: bool = False):
    """Softmax, loss and gradient in one kernel (one block per row); the loss summed in double
    (overwrite: accepted for the op set; the gradient comes back from the device in a new array)."""
    v = logits.shape[-1]
    l2 = np.ascontiguousarray(logits, np.float32).reshape(-1, v)
    rows = l2.shape[0]
    wt = (m / total).astype(np.float32).reshape(-1)
    d = DeviceArray((rows, v), np.float32)
    loss = DeviceArray((rows,), np.float64)
    _launch("softmax_xent", (rows,), (256,), _up(l2), _up(np.ascontiguousarray(targets).reshape(-1), np.int64),
            _up(wt), np.int32(v), d, loss)
    return logits.dtype.type(loss.get().sum()), XentCache(d.get().reshape(logits.shape))


def cross_entropy_backward(c: XentCache, dloss: float = 1.0) -> np.ndarray:
    return c.dlogits if dloss == 1.0 else c.dlogits * c.dlogits.dtype.type(dloss)


# -- TTT-Linear -------------------------------------------------------------------------------------------
def ttt_scratch_floats(f: int, k: int) -> int:
    """Scratch floats per (sequence, head) block of ttt_fwd / ttt_bwd (cuda/ttt_train.cu ttt_layout)."""
    return 3 * f * f + 5 * f + 14 * k * f + 3 * k * k + 8 * k


class TTTCache(NamedTuple):
    args: tuple     # the device arrays of the inputs, handed again to the backward
    Ws: DeviceArray  # inner W at each mini-batch start [B H, chunks, f, f]
    bs: DeviceArray  # inner b [B H, chunks, f]
    shape: tuple     # (B, T, D, H, Kmb)


def ttt_forward(q, k, v, lr, tok, W1, b1, gamma, beta, num_heads: int, mini_batch: int, rope_theta: float, *,
                init=None, resets=None, final: bool = False):
    """The numpy backend's ttt_forward on the GPU (ttt_fwd: one block per sequence x head, RoPE inside,
    the inner state saved at each mini-batch start for the backward).  The streaming arguments
    (init, resets, final) run on the host through the cpu backend (no GPU kernel for them yet)."""
    if init is not None or resets is not None or final:
        from . import cpu

        return cpu.ttt_forward(q, k, v, lr, tok, W1, b1, gamma, beta, num_heads, mini_batch, rope_theta,
                               init=init, resets=resets, final=final)
    bsz, t, d = q.shape
    h, kmb = num_heads, mini_batch
    f = d // h
    if f % 2 or kmb < 1:
        raise ValueError(f"ttt_forward: head_dim {f} must be even")
    cos, sin = rope_tables(np.arange(kmb), f, rope_theta, np.float32)  # positions t mod Kmb
    nch = _cdiv(t, kmb)
    args = (np.int32(bsz), np.int32(t), np.int32(d), np.int32(h), np.int32(kmb), _up(q), _up(k), _up(v), _up(lr),
            _up(tok), _up(cos), _up(sin))
    params = (_up(gamma), _up(beta))
    Ws = DeviceArray((bsz * h, nch, f, f), np.float32)
    bs = DeviceArray((bsz * h, nch, f), np.float32)
    out = DeviceArray((bsz, t, d), np.float32)
    scratch = DeviceArray((bsz * h * ttt_scratch_floats(f, kmb),), np.float32)
    _launch("ttt_fwd", (bsz * h,), (256,), *args, _up(W1), _up(np.reshape(b1, (h, f))), *params, out, Ws, bs, scratch)
    return out.get(), TTTCache(args + params, Ws, bs, (bsz, t, d, h, kmb))


def ttt_backward(dmerged: np.ndarray, c: TTTCache) -> TTTGrads:
    """Gradients of ttt_forward (ttt_bwd: each mini-batch's forward recomputed from the saved state,
    then its backward, in reverse order); the per-sequence parameter gradients summed on the host."""
    if not isinstance(c, TTTCache):  # a streaming window, computed on the host
        from . import cpu

        return cpu.ttt_backward(dmerged, c)
    bsz, t, d, h, kmb = c.shape
    f, r = d // h, bsz * h
    dq, dk, dv = (DeviceArray((bsz, t, d), np.float32) for _ in range(3))
    dlr = DeviceArray((bsz, h, t), np.float32)
    dtok_r, dW1_r = DeviceArray((r, kmb), np.float32), DeviceArray((r, f, f), np.float32)
    db1_r, dgamma_r, dbeta_r = (DeviceArray((r, f), np.float32) for _ in range(3))
    scratch = DeviceArray((r * ttt_scratch_floats(f, kmb),), np.float32)
    _launch("ttt_bwd", (r,), (256,), *c.args, c.Ws, c.bs, _up(dmerged), dq, dk, dv, dlr, dtok_r, dW1_r, db1_r,
            dgamma_r, dbeta_r, scratch)
    return TTTGrads(dq.get(), dk.get(), dv.get(), dlr.get(), dtok_r.get().sum(axis=0),
                    dW1_r.get().reshape(bsz, h, f, f).sum(axis=0), db1_r.get().reshape(bsz, h, 1, f).sum(axis=0),
                    dgamma_r.get().reshape(bsz, h, f).sum(axis=0), dbeta_r.get().reshape(bsz, h, f).sum(axis=0))


def ttt_prefill(pos: int, q, k, v, x, lr_w, lr_b, lr_scale: float, tok, gamma, beta, W0, b0, Kb, Gb, Sb, out) -> None:
    """The numpy backend's ttt_prefill on the GPU (the ttt_step kernel: one block per head reads
    the T tokens in order); the state arrays are updated in place."""
    t, d = q.shape
    h, kmb, f = W0.shape[0], tok.shape[0], W0.shape[-1]
    if f > 256 or kmb > 64:
        raise ValueError(f"the cuda backend's TTT step takes head_dim <= 256 and mini_batch <= 64, got {f}, {kmb}")
    st = [_up(a) for a in (W0, b0, Kb, Gb, Sb)]
    _STATE_EPOCH[0] += 1  # the host arrays change: a GpuDecoder holding this state uploads it again
    o = DeviceArray((t, d), np.float32)
    _launch("ttt_step", (h,), (128,), np.int32(t), np.int32(d), np.int32(f), np.int32(kmb), np.int32(pos % kmb),
            _up(q), _up(k), _up(v), _up(x), _up(lr_w), _up(lr_b), np.float32(lr_scale), _up(tok), _up(gamma),
            _up(beta), *st, o)
    for dev, host in zip(st, (W0, b0, Kb, Gb, Sb)):
        host[...] = dev.get().reshape(host.shape)
    out[...] = o.get()


# -- LM head ------------------------------------------------------------------------------------------------
_HEADS: dict[int, tuple[Int8Head, DeviceArray, DeviceArray]] = {}


def _int8_head(head: Int8Head) -> tuple[DeviceArray, DeviceArray]:
    """The int8 head on the GPU, rows padded with zeros to whole 256-blocks (uploaded once)."""
    hit = _HEADS.get(id(head))
    if hit is None or hit[0] is not head:
        vsz, d = head.q.shape
        pad = np.zeros((vsz, _ldq(d)), np.int8)
        pad[:, :d] = head.q
        hit = (head, DeviceArray.from_host(pad), DeviceArray.from_host(head.scale, np.float32))
        _HEADS[id(head)] = hit
    return hit[1], hit[2]


def lm_head(x: np.ndarray, head) -> np.ndarray:
    """x [M, D] -> logits [M, V] against a float head [V, D] (sgemm) or an Int8Head (dp4a, the cpu
    backend's bits)."""
    if isinstance(head, Int8Head):
        wq, ws = _int8_head(head)
        x = np.ascontiguousarray(x, np.float32)
        xq = quantize_act(x)
        vsz = head.q.shape[0]
        y = DeviceArray((xq.M, vsz), np.float32)
        if xq.M <= 4:
            _launch("gemv_s8", (_cdiv(vsz, 8), xq.M), (256,), wq, np.int32(vsz), np.int32(xq.ldq), ws, xq.q, xq.a, y,
                    np.int32(vsz))
        else:
            _launch("gemm_s8", (_cdiv(vsz, 64), _cdiv(xq.M, 64)), (256,), wq, np.int32(vsz), np.int32(xq.M),
                    np.int32(xq.ldq), ws, xq.q, xq.a, y, np.int32(vsz))
        return y.get()
    return matmul(x, head, trans_b=True)


# -- optimizer ------------------------------------------------------------------------------------------------
def adamw(p, g, m, v, lr: float, beta1: float, beta2: float, eps: float, wd: float, bc1: float, bc2: float,
          gscale: float) -> None:
    """One AdamW update of p, m, v (host arrays, updated in place) on the GPU."""
    n = p.size
    dp, dm, dv = _up(p), _up(m), _up(v)
    _elementwise("adamw_f", n, dp, _up(g), dm, dv, np.int64(n), np.float32(lr), np.float32(beta1),
                 np.float32(beta2), np.float32(eps), np.float32(wd), np.float32(bc1), np.float32(bc2),
                 np.float32(gscale))
    for dev, host in ((dp, p), (dm, m), (dv, v)):
        if host.flags.c_contiguous:
            dev.get(out=host)
        else:
            host[...] = dev.get()


def sumsq(x: np.ndarray) -> float:
    """sum of x^2 in double: per-block partial sums on the GPU, added in order on the host."""
    x = np.ascontiguousarray(x, np.float32).reshape(-1)
    nb = max(1, _cdiv(x.size, 4096))
    part = DeviceArray((nb,), np.float64)
    _launch("sumsq_partial", (nb,), (256,), _up(x), np.int64(x.size), part)
    return float(part.get().sum())


# -- one-token decode with every weight resident ------------------------------------------------------------
_STATE_EPOCH = [0]  # bumped by every host-side write of a TTT state (ttt_prefill): the decoder re-uploads


class GpuDecoder:
    """The model's decode step on the GPU (what `fused_decoder` returns; the interface of the cpu
    backend's _core.Decoder): every weight uploaded once, in a layout derived at load: the packed
    rows of q, k and v stacked into one [3D, K] matrix and those of gate and up into one [2I, K]
    (one GEMV launch each, a scale per stacked matrix), RoPE tables for every mini-batch position.

    Per token and layer, 10 launches: residual add + RMSNorm + quantization (one kernel), the qkv
    GEMV, RoPE, the TTT step, LayerNorm + quantization, o, add + RMSNorm + quantization, gate+up,
    SwiGLU + quantization, down; then the head and two gathers of the state rows to copy back;
    no host round trip in between.  The TTT state stays on the
    GPU between steps while the same state arrays come back and nothing else wrote them
    (ttt_prefill on the host arrays, or other arrays: uploaded again); after each step what
    changed is copied back into the host arrays (row p of Kb and Gb and Sb every token, W0 and b0
    when a mini-batch closes), so they are always current (memory files, a switch to the CPU)."""

    def __init__(self, dims: dict, layers: list[dict], head: dict):
        d, h, f, i, k = (int(dims[n]) for n in ("D", "H", "f", "I", "K"))
        if d != h * f or f > 256 or k > 64 or f % 2:
            raise ValueError(f"GpuDecoder: unsupported dimensions D={d}, H={h}, f={f}, K={k}")
        self.D, self.H, self.f, self.I, self.K, self.L = d, h, f, i, k, len(layers)
        self.eps, self.lr_scale = float(dims["rms_eps"]), float(dims["lr_scale"])
        cos, sin = np.asarray(dims["cos"], np.float32), np.asarray(dims["sin"], np.float32)  # [K, f/2]
        self.cos = DeviceArray.from_host(np.tile(cos, (1, 2 * h)))  # [K, D]: the pairs of q and k
        self.sin = DeviceArray.from_host(np.tile(sin, (1, 2 * h)))

        def t2(w):  # (codes, cols, scale[, fmt]): the CUDA kernels read 2-bit codes, a t1 matrix is unpacked
            if len(w) < 4 or w[3] != FMTS["t1"]:
                return w[0]
            return PackedTernary(w[0], w[2], w[1], "t1").to_format("t2").codes

        def stack(*ws):
            codes = np.concatenate([t2(w) for w in ws])
            return (DeviceArray.from_host(codes), DeviceArray.from_host(np.array([w[2] for w in ws], np.float32)),
                    ws[0][0].shape[0])

        self.layers = []
        for ly in layers:
            if any(ly[n][1] != (i if n == "wdown" else d) for n in ("wq", "wk", "wv", "wo", "wgate", "wup", "wdown")):
                raise ValueError("GpuDecoder: a layer's weights do not match the dimensions")
            up = {n: DeviceArray.from_host(np.asarray(ly[n], np.float32))
                  for n in ("norm1", "norm2", "lr_w", "gamma", "beta", "tok", "post_w", "post_b")}
            up["lr_b"] = DeviceArray.from_host(np.asarray(ly["lr_b"], np.float32).reshape(-1))
            up["qkv"], up["gu"], up["o"], up["down"] = (stack(ly["wq"], ly["wk"], ly["wv"]),
                                                        stack(ly["wgate"], ly["wup"]), stack(ly["wo"]),
                                                        stack(ly["wdown"]))
            self.layers.append(up)
        self.norm_f = DeviceArray.from_host(np.asarray(head["norm_w"], np.float32))
        if "Wq" in head:
            wq = np.asarray(head["Wq"], np.int8)
            self.V = wq.shape[0]
            self.head_q, self.head_s = _int8_head(Int8Head(wq, np.asarray(head["wscale"], np.float32)))
            self._keep = wq
            self.head_f = None
        else:
            self.head_f = DeviceArray.from_host(np.asarray(head["Wf"], np.float32))
            self.V = self.head_f.shape[0]
        f32 = np.float32
        self.x, self.n, self.hbuf, self.a = (DeviceArray((d,), f32) for _ in range(4))  # stream, normed, h, delta
        self.qkv, self.tout = DeviceArray((3 * d,), f32), DeviceArray((d,), f32)
        self.gu, self.sw = DeviceArray((2 * i,), f32), DeviceArray((i,), f32)
        self.q8 = DeviceArray((max(_ldq(d), _ldq(i)),), np.int8)
        self.qa, self.qs = DeviceArray((1,), f32), DeviceArray((1,), np.int32)
        self.logits = DeviceArray((self.V,), f32)
        self.krow, self.grow = (DeviceArray((self.L * h * f,), f32) for _ in range(2))  # row p of Kb, Gb
        self.state = None
        self._key = None
        self._graphs = {}
        self._use_graphs = os.environ.get("BITTTT_CUDA_GRAPHS", "1") != "0"

    def _gemv(self, w, k: int, out: DeviceArray) -> None:
        codes, scales, rows_per = w
        n = codes.shape[0]
        _launch("gemv_i8", (_cdiv(n, 8), 1), (256,), codes, np.int32(n), np.int32(_ldq(k)), scales, np.int32(rows_per),
                self.q8, self.qs, self.qa, out, np.int32(n))

    def _sync_in(self, arrays) -> None:
        """Upload the state unless the GPU copy is current; into the same buffers (the graphs keep
        their pointers)."""
        key = tuple((id(a), a.ctypes.data) for a in arrays) + (_STATE_EPOCH[0],)
        if self.state is None or [d.shape for d in self.state] != [a.shape for a in arrays]:
            self.state = [DeviceArray.from_host(np.ascontiguousarray(a, np.float32)) for a in arrays]
            self._graphs = {}
        elif key != self._key:
            for dev, host in zip(self.state, arrays):
                dev.set(host)
        self._key = key

    def step(self, x, W0, b0, Kb, Gb, Sb, pos: int, logits) -> None:
        """x [D] (the token's embedding row) -> logits [V]; the state (host arrays) updated in place.
        On a GPU the launches of one position of the mini-batch are a CUDA graph, captured at the
        first token there and replayed after (BITTTT_CUDA_GRAPHS=0: plain launches)."""
        p = int(pos) % self.K
        self._sync_in((W0, b0, Kb, Gb, Sb))
        sW, sb, sK, sG, sS = self.state
        self.x.set(np.asarray(x, np.float32))
        dev = device()
        if self._use_graphs and hasattr(dev, "graph_capture"):
            try:
                exe = self._graphs.get(p)
                if exe is None:
                    exe = self._graphs[p] = dev.graph_capture(lambda: self._launches(p))
                dev.graph_launch(exe)
            except Exception as e:  # a driver without capture support: plain launches from now on
                import warnings

                warnings.warn(f"CUDA graph capture failed ({e}); decoding with plain launches", stacklevel=2)
                self._use_graphs = False
                self._graphs = {}
                self._launches(p)
        else:
            self._launches(p)
        self.logits.get(out=logits)
        # back to the host only what changed: row p of Kb and Gb (gathered into krow, grow), Sb, and
        # W0 and b0 when the mini-batch closed
        Kb[:, :, p] = self.krow.get().reshape(Kb.shape[0], Kb.shape[1], Kb.shape[3])
        Gb[:, :, p] = self.grow.get().reshape(Gb.shape[0], Gb.shape[1], Gb.shape[3])
        sS.get(out=Sb)
        if p == self.K - 1:
            sW.get(out=W0)
            sb.get(out=b0)

    def _launches(self, p: int) -> None:
        """Every kernel of one decode step at mini-batch position p (device buffers only)."""
        d, i = self.D, self.I
        ldd, ldi = _ldq(d), _ldq(i)
        sW, sb, sK, sG, sS = self.state
        per = (self.H * self.f * self.f * 4, self.H * self.f * 4, self.H * self.K * self.f * 4)
        qz = (self.q8, self.qa, self.qs)
        base, delta, out = self.x, NULL, NULL  # the residual stream is base + delta, written to out
        for li, ly in enumerate(self.layers):
            _launch("add_rmsnorm_quant", (1,), (256,), base, delta, out, ly["norm1"], np.int32(d), np.float32(self.eps),
                    self.n, np.int32(ldd), *qz)
            self._gemv(ly["qkv"], d, self.qkv)
            _launch("rope_f", (_cdiv(d, 256),), (256,), self.qkv, self.cos.ptr + p * d * 4, self.sin.ptr + p * d * 4,
                    np.int64(d), np.int32(0), self.qkv)
            q = self.qkv.ptr
            _launch("ttt_step", (self.H,), (128,), np.int32(1), np.int32(d), np.int32(self.f), np.int32(self.K),
                    np.int32(p), q, q + 4 * d, q + 8 * d, self.n, ly["lr_w"], ly["lr_b"], np.float32(self.lr_scale),
                    ly["tok"], ly["gamma"], ly["beta"], sW.ptr + li * per[0], sb.ptr + li * per[1],
                    sK.ptr + li * per[2], sG.ptr + li * per[2], sS.ptr + li * per[1], self.tout)
            _launch("layernorm_quant", (1,), (256,), self.tout, ly["post_w"], ly["post_b"], np.int32(d),
                    np.float32(LN_EPS), self.n, np.int32(ldd), *qz)
            self._gemv(ly["o"], d, self.a)
            _launch("add_rmsnorm_quant", (1,), (256,), self.x, self.a, self.hbuf, ly["norm2"], np.int32(d),
                    np.float32(self.eps), self.n, np.int32(ldd), *qz)  # h = x + attention
            self._gemv(ly["gu"], d, self.gu)
            _launch("swiglu_quant", (1,), (256,), self.gu, np.int32(i), self.sw, np.int32(ldi), *qz)
            self._gemv(ly["down"], i, self.a)
            base, delta, out = self.hbuf, self.a, self.x  # x = h + mlp, summed by the next norm
        _launch("add_rmsnorm_quant", (1,), (256,), base, delta, out, self.norm_f, np.int32(d), np.float32(self.eps),
                self.n, np.int32(ldd), *qz)
        rows = self.L * self.H
        for src, dst in ((sK, self.krow), (sG, self.grow)):
            _launch("gather_rows", (_cdiv(rows * self.f, 256),), (256,), src, np.int32(rows), np.int64(self.K * self.f),
                    np.int64(p * self.f), np.int32(self.f), dst)
        if self.head_f is None:
            _launch("gemv_s8", (_cdiv(self.V, 8), 1), (256,), self.head_q, np.int32(self.V), np.int32(ldd),
                    self.head_s, self.q8, self.qa, self.logits, np.int32(self.V))
        else:
            _launch("sgemm", (_cdiv(self.V, 64), 1), (256,), np.int32(1), np.int32(self.V), np.int32(d), self.n,
                    np.int32(d), np.int32(0), self.head_f, np.int32(d), np.int32(1), self.logits, np.int32(self.V))


def fused_decoder(dims: dict, layers: list[dict], head: dict) -> GpuDecoder:
    """The decode step of BitLlama.step on the GPU (see GpuDecoder)."""
    return GpuDecoder(dims, layers, head)


# -- moving a model ---------------------------------------------------------------------------------------
def adopt(model, optimizer=None):
    """Run an existing BitLlama (for training or for inference) on this backend from now on, and
    the optimizer's steps too when one is given: the parameters stay where they are (float32 host
    arrays; PackedTernary weights are uploaded on first use), so checkpoints, packed files and
    memory files are those of the cpu backend.  Returns the model."""
    if np.dtype(model.dtype) != DTYPE:
        raise TypeError(f"the cuda backend computes in float32; this model is {model.dtype}")
    model.backend = sys.modules[__name__]
    model._fused = None
    if optimizer is not None:
        optimizer.backend = sys.modules[__name__]
    return model


def for_device(name: str):
    """The `--device` option of the commands: (backend module or None for the CPU, reason or None).
    For "cuda", the module when the GPU opens, else (None, why it did not: the cause named)."""
    if str(name).lower() != "cuda":
        return None, None
    try:
        device()
    except CudaUnavailable as e:
        return None, f"CUDA is not available ({e.cause}): {e}"
    return sys.modules[__name__], None
