"""Peak memory of a block of work, measured as honestly as the device allows.

CUDA: `torch.cuda.max_memory_allocated` (tensor memory, exact). CPU: torch keeps no allocation
statistics, so a thread samples the process's resident set size (RSS) every few milliseconds
and the peak growth over the start is reported. That counts everything the process touches
(allocator caching included) and can miss spikes shorter than the sampling interval, so compare
it between arms of one run only; freed heap is handed back to the OS before each measurement
(glibc malloc_trim) so one arm's leftovers do not hide the next arm's growth.
"""
from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from typing import Any


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:  # noqa: BLE001 - no way to measure: report nothing rather than fail
            return 0


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager; after exit, `.peak_bytes` and `.kind` describe the block's peak."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.kind = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cuda = False

    def __enter__(self) -> PeakMemory:
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self.kind = "cuda_max_allocated_growth"
            return self
        _trim()
        self._base = _rss_bytes()
        self._max = self._base
        self.kind = "cpu_peak_rss_growth" if self._base else "none"

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, _rss_bytes())
                time.sleep(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._max = max(self._max, _rss_bytes())
        self.peak_bytes = max(0, self._max - self._base)

    @property
    def description(self) -> str:
        return {
            "cuda_max_allocated_growth": "CUDA peak allocated tensor memory above the start",
            "cpu_peak_rss_growth": "peak process RSS growth above the start (sampled every 5 ms)",
        }.get(self.kind, "not measured")
