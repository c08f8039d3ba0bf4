"""What a worker counts for GET /metrics: model loads and evictions per tier, node-output
cache hits, and its GPU as NVML sees it."""
from __future__ import annotations

import os
from collections import Counter, defaultdict

import torch

from farm.records.metrics import WorkerCounters
from farm.worker.nvml import GpuMonitor


def gpu_monitor(device: torch.device, period_s: float = 1.0) -> GpuMonitor | None:
    """A sampler of the worker's own GPU; None for a CPU worker (nothing to sample)."""
    if device.type != "cuda":
        return None
    uuid = None
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except Exception:  # an old torch without .uuid: CUDA_VISIBLE_DEVICES then names the GPU
        pass
    return GpuMonitor(uuid, os.environ.get("CUDA_VISIBLE_DEVICES"), period_s=period_s)


def worker_counters(models, engine) -> WorkerCounters:
    """models: farm.models.tiers.TieredModelProvider; engine: farm.engine.Engine."""
    loads: Counter[str] = Counter()
    seconds: dict[str, float] = defaultdict(float)
    for move in list(models.moves):
        loads[move.source.value] += 1
        seconds[move.source.value] += move.seconds
    return WorkerCounters(dict(loads), dict(seconds), dict(models.evictions), engine.node_cache_hits,
                          sum(engine.node_runs.values()))
