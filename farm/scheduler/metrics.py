"""The dispatcher's side of GET /metrics: what it counts as jobs reach history, and the
FarmMetrics record put together from the queue, the workers' states and the autoscaler."""
from __future__ import annotations

import bisect
from collections import OrderedDict

from farm.records.metrics import (
    LATENCY_BUCKETS_S,
    FarmMetrics,
    GpuSample,
    Histogram,
    WorkerCounters,
    WorkerMetrics,
)
from farm.scheduler.autoscale import fleet_backlog_s
from farm.scheduler.fleet import Fleet
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.messages import WorkerState

NOT_ANSWERING = "the worker did not answer"  # why a worker that is starting or stuck has no sample
REMEMBERED = 100_000  # job ids kept to count each finish once (a late duplicate report)


def output_images(job: Job) -> int:
    return sum(len(ui.get("images", ())) for ui in job.outputs.values() if isinstance(ui, dict))


class FarmMeter:
    """Counts jobs as they reach history. Plain Python; the dispatcher calls `finished`
    with every job whose end it announces."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds = bounds
        self.finished_by_state: dict[str, int] = {s.value: 0 for s in JobState if s.finished}
        self.images = 0
        self._buckets = [0] * (len(bounds) + 1)
        self._latency_sum = 0.0
        self._seen: OrderedDict[str, None] = OrderedDict()

    def finished(self, job: Job) -> None:
        if not job.state.finished or job.job_id in self._seen:
            return
        self._seen[job.job_id] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        self.finished_by_state[job.state.value] += 1
        if job.state is JobState.DONE:
            self.images += output_images(job)
            if job.finished_s is not None:
                latency = max(0.0, job.finished_s - job.created_s)
                self._buckets[bisect.bisect_left(self.bounds, latency)] += 1
                self._latency_sum += latency

    def latency(self) -> Histogram:
        return Histogram(self.bounds, tuple(self._buckets), self._latency_sum)


def queue_depth(fleet: Fleet) -> dict[str, int]:
    """Pending jobs per checkpoint, from the queues' own counts (no scan of the jobs)."""
    depth: dict[str, int] = {}
    for queue in (fleet.pool, *(view.queue for view in fleet.workers.values())):
        for checkpoint in queue.checkpoints():
            name = checkpoint or ""
            depth[name] = depth.get(name, 0) + queue.count_of(checkpoint)
    return depth


def worker_metrics(worker_id: str, state: WorkerState | None) -> WorkerMetrics:
    if state is None:  # it did not answer in time: shown, not measured
        return WorkerMetrics(worker_id, "", None, "", False, GpuSample(utilization_reason=NOT_ANSWERING),
                             WorkerCounters())
    return WorkerMetrics(worker_id, state.node, state.gpu_index, state.gpu_name, True, state.gpu, state.counters)


def farm_metrics(meter: FarmMeter, fleet: Fleet, now_s: float, states: dict[str, WorkerState | None],
                 requested_gpus: int | None, wanted_gpus: int | None) -> FarmMetrics:
    running = sum(len(view.running) for view in fleet.workers.values())
    return FarmMetrics(queue_depth(fleet), running, dict(meter.finished_by_state), meter.images, meter.latency(),
                       fleet_backlog_s(fleet, now_s),
                       tuple(worker_metrics(w, s) for w, s in states.items()), requested_gpus, wanted_gpus)
