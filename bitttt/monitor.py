"""RAM, CPU and (when there is one) GPU use, for the progress bar and the training log.

    from bitttt.monitor import Monitor
    mon = Monitor()
    mon.snapshot()   # {'rss_mb': 812.3, 'ram_used_pct': 41.0, 'ram_avail_mb': 14020.0, 'cpu_pct': 187.5, ...}

Process RSS, system RAM and CPU use come from psutil.  GPU memory and utilisation come from
NVML (`pip install nvidia-ml-py`) when that package and an NVIDIA driver are present; any
failure there is silent and the GPU fields are simply absent.
"""
from __future__ import annotations

import os

import psutil


class Monitor:
    """Samples resource use.  `gpu_index`: the GPU to report (default 0, or none if NVML is absent)."""

    def __init__(self, gpu_index: int = 0):
        self.proc = psutil.Process(os.getpid())
        self.proc.cpu_percent(None)  # first call primes the counter
        self.peak_rss_mb = 0.0
        self._nvml = None
        self._gpu = None
        try:  # optional: nvidia-ml-py
            import pynvml

            pynvml.nvmlInit()
            self._gpu = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
            self._nvml = pynvml
        except Exception:
            self._nvml = None

    @property
    def has_gpu(self) -> bool:
        return self._nvml is not None

    def snapshot(self) -> dict[str, float]:
        """rss_mb (this process, MiB), peak_rss_mb, ram_used_pct and ram_avail_mb (system),
        cpu_pct (this process since the last call, 100 per busy core); gpu_mem_mb, gpu_mem_total_mb,
        gpu_util_pct when a GPU is visible through NVML."""
        rss = self.proc.memory_info().rss / 2**20
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        vm = psutil.virtual_memory()
        out = {"rss_mb": round(rss, 1), "peak_rss_mb": round(self.peak_rss_mb, 1),
               "ram_used_pct": round(vm.percent, 1), "ram_avail_mb": round(vm.available / 2**20, 1),
               "cpu_pct": round(self.proc.cpu_percent(None), 1)}
        if self._nvml is not None:
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(self._gpu)
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._gpu)
                out.update(gpu_mem_mb=round(mem.used / 2**20, 1), gpu_mem_total_mb=round(mem.total / 2**20, 1),
                           gpu_util_pct=float(util.gpu))
            except Exception:
                pass
        return out

    def short(self, snap: dict[str, float] | None = None) -> str:
        """A compact string for a progress bar: 'RAM 812M (41%)' plus 'GPU 1.2G 87%' when present."""
        s = snap or self.snapshot()
        text = f"RAM {s['rss_mb']:.0f}M ({s['ram_used_pct']:.0f}%)"
        if "gpu_mem_mb" in s:
            text += f" GPU {s['gpu_mem_mb'] / 1024:.1f}G {s['gpu_util_pct']:.0f}%"
        return text
