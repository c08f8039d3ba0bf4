"""What GET /metrics exports: the farm's counters and gauges as plain records. The
dispatcher fills them (farm.scheduler.metrics), farm.server.routes.metrics renders them in
Prometheus' text format.

Counters count from the start of the process that keeps them (the dispatcher, or one
worker): a restart starts them again at 0, which Prometheus' rate() reads as a reset.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Seconds from submit to history: tiny CPU jobs take ~1 s, an SDXL sweep behind a queue an hour.
LATENCY_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

NO_GPU = "no GPU: a CPU worker"  # WorkerCounters.utilization_reason of a worker without one


@dataclass(frozen=True)
class Histogram:
    """Observations per bucket (not cumulative); the last count is above every bound."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS_S) + 1)
    sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class GpuSample:
    """One worker's GPU as NVML last saw it. utilization None: not measured, and
    utilization_reason says why (NO_GPU on a CPU worker, or NVML's failure)."""

    utilization: float | None = None  # busy fraction 0..1 over the sampling window
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_reason: str | None = NO_GPU


@dataclass(frozen=True)
class WorkerCounters:
    """Counts one worker keeps since it started."""

    loads: dict[str, int] = field(default_factory=dict)  # source tier ("pinned", "disk", "store") -> loads
    load_seconds: dict[str, float] = field(default_factory=dict)  # source tier -> seconds spent loading
    evictions: dict[str, int] = field(default_factory=dict)  # tier left ("gpu", "pinned", "disk") -> count
    node_cache_hits: int = 0  # node outputs taken from the cache instead of run (per job)
    node_runs: int = 0  # node executions (a batched call counts once)


@dataclass(frozen=True)
class WorkerMetrics:
    worker_id: str
    node: str
    gpu_index: int | None
    gpu_name: str
    alive: bool  # answered within the state timeout
    gpu: GpuSample = field(default_factory=GpuSample)
    counters: WorkerCounters = field(default_factory=WorkerCounters)


@dataclass(frozen=True)
class FarmMetrics:
    queue_depth: dict[str, int]  # checkpoint ("" for jobs that load none) -> pending jobs
    running: int  # jobs in a worker's current call
    finished: dict[str, int]  # "done" | "failed" | "cancelled" -> jobs that reached history
    images: int  # images of jobs that finished done
    latency: Histogram  # seconds from submit to history, done jobs
    backlog_gpu_s: float  # GPU seconds of queued and running work (what autoscaling reads)
    workers: tuple[WorkerMetrics, ...]
    autoscaler_requested_gpus: int | None  # GPUs last asked of the autoscaler; None: autoscaling off
    autoscaler_wanted_gpus: int | None  # what the backlog asks for now (before the scale-down delay)
