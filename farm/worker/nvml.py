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
    p5_util: float = 0.0  # 5th percentile: what the GPU does in its worst moments (gaps show here)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))
    return float(ordered[rank])


def gpu_identity(index: int = 0) -> tuple[str, str] | None:
    """(name, UUID) of the NVML device at `index` (after CUDA_VISIBLE_DEVICES, as CUDA
    numbers them, when that names one device); None without NVML."""
    try:
        import os

        import pynvml

        pynvml.nvmlInit()
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if visible and index < len(visible) and visible[index].strip().isdigit():
            index = int(visible[index])
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
        decode = (lambda v: v.decode() if isinstance(v, bytes) else str(v))
        return decode(name), decode(uuid)
    except Exception:
        return None


class NvmlSampler:
    """Samples nvmlDeviceGetUtilizationRates(gpu).gpu every `period_s` between start() and
    stop(). NVML's figure is the fraction of time a kernel was running, which is what
    "the GPU is idle two thirds of the time" measures. Without NVML (a CPU box) it reports
    nothing rather than failing."""

    def __init__(self, index: int = 0, period_s: float = 0.05):
        self.index, self.period_s = index, period_s
        self._values: list[int] = []
        self._times: list[float] = []  # seconds since start, one per value
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
            self._times.append(time.perf_counter() - self._started)
            time.sleep(self.period_s)

    def __enter__(self) -> "NvmlSampler":
        self._values.clear()
        self._times.clear()
        self._stop.clear()
        self._started = time.perf_counter()
        self.started_wall_s = time.time()  # to place events stamped in unix seconds on the timeline
        if self.available:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, window: tuple[float, float] | None = None) -> UtilSummary | None:
        """Over every sample, or over those taken within `window` (seconds since start)."""
        values = self._values if window is None else [
            v for t, v in zip(self._times, self._values) if window[0] <= t <= window[1]]
        if not values:
            return None
        return UtilSummary(sum(values) / len(values), len(values), self.period_s, percentile(values, 5))

    def timeline(self) -> list[tuple[float, int]]:
        """(seconds since start, percent) per sample, for plots."""
        return list(zip(self._times, self._values))


class GpuMonitor:
    """A worker's own GPU, sampled every `period_s` on a daemon thread: the busy fraction
    averaged over the last `window` samples, and memory in use. NVML numbers GPUs
    physically and ignores CUDA_VISIBLE_DEVICES, so the GPU is found by its UUID (what
    torch reports for the device the worker was given), else by the first index in
    CUDA_VISIBLE_DEVICES. Without a GPU, or without NVML, `sample()` says why instead."""

    def __init__(self, uuid: str | None, visible: str | None = None, period_s: float = 1.0, window: int = 10):
        from collections import deque

        from farm.records.metrics import GpuSample

        self.period_s = period_s
        self._busy: deque[int] = deque(maxlen=window)
        self._memory: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._sample_type = GpuSample
        self.reason: str | None = None  # why nothing is measured; None while sampling
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = self._find(pynvml, uuid, visible)
        except Exception as exc:  # no driver, nvidia-ml-py missing, or the GPU is not found
            self._nvml = None
            self.reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return
        self._thread = threading.Thread(target=self._loop, name="gpu-monitor", daemon=True)
        self._thread.start()

    @staticmethod
    def _find(pynvml, uuid: str | None, visible: str | None):
        if uuid:
            for candidate in (uuid, f"GPU-{uuid}"):
                try:
                    return pynvml.nvmlDeviceGetHandleByUUID(candidate)
                except Exception:
                    continue
        first = (visible or "").split(",")[0].strip()
        if first.startswith("GPU-"):
            return pynvml.nvmlDeviceGetHandleByUUID(first)
        return pynvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._busy.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                self._memory = (int(memory.used), int(memory.total))
            except Exception as exc:  # the GPU fell off the bus: report it, stop sampling
                self.reason = f"NVML stopped answering: {type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.period_s)

    def sample(self):
        """farm.records.metrics.GpuSample of the last window."""
        values = list(self._busy)
        if self.reason is not None or not values:
            return self._sample_type(None, None, None, self.reason or "no NVML sample yet")
        used, total = self._memory if self._memory is not None else (None, None)
        return self._sample_type(sum(values) / len(values) / 100.0, used, total, None)

    def stop(self) -> None:
        self._stop.set()
