"""The worker's own GPU through NVML (GET /workers utilization, GET /metrics): on a CPU
box the worker says it has none; on a GPU box (skipped elsewhere) a busy GPU reads busy."""
import time

import pytest
import torch

from farm.records.metrics import NO_GPU, GpuSample
from farm.worker.counters import gpu_monitor
from farm.worker.nvml import GpuMonitor

CUDA = torch.cuda.is_available()


def test_a_cpu_worker_has_no_monitor_and_says_so():
    assert gpu_monitor(torch.device("cpu")) is None
    sample = GpuSample()  # what a CPU worker's state carries
    assert sample.utilization is None and sample.utilization_reason == NO_GPU


@pytest.mark.skipif(CUDA, reason="a machine with a GPU has NVML")
def test_without_nvml_the_monitor_reports_why_instead_of_failing():
    sample = GpuMonitor("no-such-gpu", "0", period_s=0.01).sample()
    assert sample.utilization is None and sample.utilization_reason.startswith("NVML unavailable")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_the_workers_gpu_reads_busy_while_it_computes():
    device = torch.device("cuda", 0)
    monitor = gpu_monitor(device, period_s=0.1)  # the window: the last 10 samples, 1 s
    try:
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # keep the GPU busy for a few sampling periods
            for _ in range(20):
                a @ a
            torch.cuda.synchronize(device)
        sample = monitor.sample()
        assert sample.utilization_reason is None, sample
        assert sample.utilization > 0.5
        free, total = torch.cuda.mem_get_info(device)
        assert sample.memory_total_bytes >= total  # NVML counts the memory the driver keeps too
        assert sample.memory_used_bytes >= a.nbytes
    finally:
        monitor.stop()
