"""Scale-down: which idle workers to retire once the wanted GPU count has stayed below the
live workers for the delay; never one with a running or reserved batch."""
from farm.records.residency import GB, ResidencyReport
from farm.scheduler.autoscale import RetirePolicy, ScaleKnobs, retirable
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.jobs import Job
from farm.scheduler.placement import FarmPolicy
from farm.scheduler.store import JobStore

EMPTY = ResidencyReport(gpu_free_bytes=12 * 10**9)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def job(n: int) -> Job:
    return Job(job_id=f"p{n}", number=n, checkpoint="a.safetensors", checkpoint_bytes=GB, est_run_s=2.0)


def test_only_idle_workers_with_nothing_running_or_reserved_may_be_retired():
    clock = Clock()
    core = DispatcherCore(JobStore(), FarmPolicy(), clock, CoreConfig(max_batch=4))
    for w in ("w1", "w2", "w3", "w4"):
        core.register_worker(w, EMPTY)
    core.submit(job(1))
    assert core.worker_ready("w1", EMPTY) is not None  # w1 runs a batch
    for w in ("w2", "w3", "w4"):
        assert core.worker_ready(w, EMPTY) is None  # asked for work, got none: idle
    core.fleet.enqueue(job(2), "w3")  # a batch reserved for w3 (as a push policy does)
    assert retirable(core.fleet) == ["w2", "w4"]  # idle longest first


def test_retirement_waits_for_the_delay_then_takes_the_idle_above_the_peak():
    clock = Clock()
    retire = RetirePolicy(ScaleKnobs(max_gpus=8, scale_down_delay_s=30.0), clock)
    idle = ["w2", "w3", "w4"]
    assert retire.pick(wanted=4, live=4, idle=idle) == []  # wanted as many as live
    assert retire.pick(wanted=1, live=4, idle=idle) == []  # the wait starts
    clock.now_s = 10
    assert retire.pick(wanted=2, live=4, idle=idle) == []  # a higher count during the wait
    clock.now_s = 31
    assert retire.pick(wanted=1, live=4, idle=idle) == ["w2", "w3"]  # down to the wait's peak (2)
    assert retire.pick(wanted=1, live=2, idle=["w4"]) == []  # at the peak: nothing more


def test_a_busy_pool_retires_only_what_is_idle_and_a_rise_cancels_the_wait():
    clock = Clock()
    retire = RetirePolicy(ScaleKnobs(max_gpus=8, scale_down_delay_s=5.0, min_gpus=1), clock)
    assert retire.pick(wanted=0, live=3, idle=[]) == []
    clock.now_s = 6
    assert retire.pick(wanted=0, live=3, idle=[]) == []  # the wait is over but nobody is idle
    assert retire.pick(wanted=0, live=3, idle=["w1"]) == ["w1"]  # it goes once it is idle
    assert retire.pick(wanted=0, live=2, idle=["w2", "w3"]) == ["w2"]  # min_gpus keeps one
    assert retire.pick(wanted=3, live=1, idle=["w3"]) == []  # more wanted: the wait ends
    clock.now_s = 8
    assert retire.pick(wanted=0, live=2, idle=["w3"]) == []  # a new fall waits again
