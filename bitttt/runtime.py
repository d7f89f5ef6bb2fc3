"""Run-time settings of the C core: which kernel (ISA) runs and on how many threads.

Environment, read once at import:
  BITTTT_KERNEL       scalar | avx2 | avx512 | auto (default auto: the best the CPU supports)
  BITTTT_NUM_THREADS  threads for the kernels (default: the number of physical cores)
"""
from __future__ import annotations

import operator
import os

from . import _core

KERNELS: tuple[str, ...] = tuple(_core.ISA_NAMES)
MAX_THREADS = 4096  # far above any machine's cores; a larger count is a typo


def physical_cores() -> int:
    """Number of physical CPU cores (falls back to logical CPUs, then 1)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to read the topology
        n = None
    return max(1, n or os.cpu_count() or 1)


def available_kernels() -> list[str]:
    """Kernel paths this machine can run, slowest first (always starts with 'scalar')."""
    return [name for i, name in enumerate(KERNELS) if _core.isa_supported(i)]


def get_kernel() -> str:
    """Name of the kernel path in use: 'scalar', 'avx2' or 'avx512'."""
    return KERNELS[_core.get_isa()]


def set_kernel(name: str) -> None:
    """Force a kernel path ('scalar', 'avx2', 'avx512') or pick the best with 'auto'.

    Raises ValueError for an unknown name or a path this CPU cannot run.
    """
    key = str(name).strip().lower()
    if key in ("auto", "best", ""):
        _core.set_isa(_core.isa_best())
        return
    if key not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)} or 'auto'")
    idx = KERNELS.index(key)
    if not _core.isa_supported(idx):
        raise ValueError(
            f"kernel {key!r} is not supported on this CPU; available: {', '.join(available_kernels())}"
        )
    _core.set_isa(idx)


def get_num_threads() -> int:
    """Threads the kernels use."""
    return _core.get_threads()


def set_num_threads(n: int) -> None:
    """Set the threads the kernels use (n >= 1)."""
    if isinstance(n, bool):
        raise TypeError("number of threads must be an integer, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"number of threads must be an integer, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"number of threads must be <= {MAX_THREADS}, got {n}")
    _core.set_threads(n)


def cpu_info() -> dict:
    """What the core sees: kernels available and in use, threads, OpenMP."""
    return {
        "kernel": get_kernel(),
        "available_kernels": available_kernels(),
        "threads": get_num_threads(),
        "physical_cores": physical_cores(),
        "openmp": _core.openmp_enabled(),
    }


def _not_a_count(text: str) -> int:
    raise ValueError(f"must be a whole number of threads from 1 to {MAX_THREADS}")


def _init_from_env() -> None:
    kernel = os.environ.get("BITTTT_KERNEL", "auto")
    try:
        set_kernel(kernel)
    except ValueError as e:
        raise ImportError(f"bitttt: BITTTT_KERNEL={kernel!r}: {e}") from None
    threads = os.environ.get("BITTTT_NUM_THREADS")
    if threads:
        try:
            set_num_threads(int(threads.strip()) if threads.strip().isdigit() else _not_a_count(threads))
        except ValueError as e:
            raise ImportError(f"bitttt: BITTTT_NUM_THREADS={threads!r}: {e}") from None
    else:
        set_num_threads(physical_cores())


_init_from_env()
