"""GPU utilisation from NVML, sampled on a background thread (benchmarks and /workers)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class UtilSummary:
    mean_util: float  # NVML "GPU busy" percentage averaged over the samples, 0..100
    samples: int
    period_s: float


class NvmlSampler:
    """Samples nvmlDeviceGetUtilizationRates(gpu).gpu every `period_s` between start() and
    stop(). NVML's figure is the fraction of time a kernel was running, which is what
    "the GPU is idle two thirds of the time" measures. Without NVML (a CPU box) it reports
    nothing rather than failing."""

    def __init__(self, index: int = 0, period_s: float = 0.05):
        self.index, self.period_s = index, period_s
        self._values: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:  # no driver, no GPU, or nvidia-ml-py missing
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._values.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            time.sleep(self.period_s)

    def __enter__(self) -> "NvmlSampler":
        self._values.clear()
        self._stop.clear()
        if self.available:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> UtilSummary | None:
        if not self._values:
            return None
        return UtilSummary(sum(self._values) / len(self._values), len(self._values), self.period_s)
