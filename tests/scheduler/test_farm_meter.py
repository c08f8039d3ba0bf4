"""FarmMeter and the FarmMetrics record, over a real DispatcherCore on an injected clock."""
import pytest

from farm.records.metrics import LATENCY_BUCKETS_S
from farm.records.residency import GB, ResidencyReport
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.jobs import Job
from farm.scheduler.metrics import FarmMeter, farm_metrics
from farm.scheduler.placement import FarmPolicy
from farm.scheduler.store import JobStore

EMPTY = ResidencyReport(gpu_free_bytes=12 * 10**9)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def job(n: int, checkpoint: str | None = "a.safetensors") -> Job:
    return Job(job_id=f"p{n}", number=n, checkpoint=checkpoint, checkpoint_bytes=GB if checkpoint else 0,
               batch_key=f"k{checkpoint}", est_run_s=2.0, est_extra_s=0.5)


def test_finished_jobs_are_counted_once_with_their_images_and_latency():
    clock = Clock()
    core = DispatcherCore(JobStore(), FarmPolicy(), clock, CoreConfig(max_batch=8))
    core.register_worker("w1", EMPTY)
    meter = FarmMeter()
    for n in range(3):
        core.submit(job(n))
    core.submit(job(3, "b.safetensors"))
    core.submit(job(4, None))
    metrics = farm_metrics(meter, core.fleet, clock.now_s, {"w1": None}, None, None)
    assert metrics.queue_depth == {"a.safetensors": 3, "b.safetensors": 1, "": 1}
    assert metrics.backlog_gpu_s == pytest.approx(3 * 2.0 + 2 * 0.5)
    assert metrics.workers[0].alive is False
    assert metrics.workers[0].gpu.utilization_reason == "the worker did not answer"
    assert core.worker_ready("w1", EMPTY).job_ids == ("p4",)  # needs no load: first
    core.complete("p4", {})
    batch = core.worker_ready("w1", EMPTY)
    assert batch.job_ids == ("p0", "p1", "p2")
    clock.now_s = 7.0
    images = {"9": {"images": [{"filename": "a.png"}, {"filename": "b.png"}]}}
    core.complete("p0", images)
    core.complete("p1", {})
    core.fail("p2", "boom")
    for job_id in ("p0", "p1", "p2", "p0"):  # p0 twice: a late duplicate report
        meter.finished(core.job(job_id))
    meter.finished(core.job("p3"))  # still queued: not counted
    metrics = farm_metrics(meter, core.fleet, clock.now_s, {}, 3, 4)
    assert metrics.finished == {"done": 2, "failed": 1, "cancelled": 0}
    assert metrics.images == 2
    assert metrics.latency.count == 2 and metrics.latency.sum == pytest.approx(14.0)
    assert metrics.latency.counts[LATENCY_BUCKETS_S.index(10.0)] == 2  # 7 s: the (5, 10] bucket
    assert (metrics.autoscaler_requested_gpus, metrics.autoscaler_wanted_gpus) == (3, 4)
