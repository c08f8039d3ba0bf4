"""ScalePolicy on an injected clock, and the backlog it reads from a real DispatcherCore."""
import pytest

from farm.records.residency import GB, ResidencyReport
from farm.scheduler.autoscale import (
    ScaleKnobs,
    ScaleKnobsError,
    ScalePolicy,
    fleet_backlog_s,
    fleet_busy,
)
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


def policy(**knobs) -> tuple[ScalePolicy, Clock]:
    clock = Clock()
    options = dict(max_gpus=8, target_backlog_s=10.0, scale_down_delay_s=30.0) | knobs
    return ScalePolicy(ScaleKnobs(**options), clock), clock


def test_wanted_gpus_is_the_backlog_over_the_target_rounded_up_and_capped():
    scale, _ = policy()
    assert [scale.wanted_for(s) for s in (0, 0.1, 10, 10.5, 35, 1e6)] == [0, 1, 1, 2, 4, 8]
    floor, _ = policy(min_gpus=2)
    assert floor.wanted_for(0) == 2 and floor.update(0) == 2


def test_gpus_at_work_are_kept_however_small_the_backlog():
    scale, clock = policy()
    assert scale.update(5, busy_gpus=4) == 4  # short jobs: little backlog, but four GPUs keep up with them
    clock.now_s = 100
    assert scale.update(0, busy_gpus=4) == 4
    assert scale.wanted_for(0, busy_gpus=20) == 8  # the cap still holds


def test_a_rise_is_asked_for_at_once():
    scale, clock = policy()
    assert scale.update(0) == 0
    clock.now_s = 1
    assert scale.update(25) == 3
    clock.now_s = 2
    assert scale.update(61) == 7


def test_a_fall_waits_for_the_delay_and_keeps_the_peak_of_the_wait():
    scale, clock = policy()
    scale.update(80)  # 8
    for t, backlog in ((10, 30), (20, 50), (35, 20)):  # lower since t=10; peak 5
        clock.now_s = t
        assert scale.update(backlog) == 8
    clock.now_s = 40
    assert scale.update(0) == 5  # 30 s after it first fell: the highest count wanted meanwhile
    clock.now_s = 69
    assert scale.update(0) == 5
    clock.now_s = 70
    assert scale.update(0) == 0  # the queue drained: the request is withdrawn


def test_a_rise_during_the_wait_cancels_the_fall():
    scale, clock = policy()
    scale.update(40)  # 4
    clock.now_s = 10
    scale.update(0)
    clock.now_s = 20
    assert scale.update(40) == 4  # back up: the clock of the fall starts again
    clock.now_s = 45
    assert scale.update(0) == 4
    clock.now_s = 75
    assert scale.update(0) == 0


@pytest.mark.parametrize("knobs, word", [
    (dict(max_gpus=0), "max_gpus"),
    (dict(min_gpus=9, max_gpus=8), "min_gpus"),
    (dict(target_backlog_s=0), "target_backlog_s"),
    (dict(scale_down_delay_s=-1), "scale_down_delay_s"),
])
def test_bad_knobs_are_refused_by_name(knobs, word):
    with pytest.raises(ScaleKnobsError, match=word):
        ScaleKnobs(**knobs)


def test_the_backlog_counts_queued_batches_and_the_rest_of_running_ones():
    clock = Clock()
    core = DispatcherCore(JobStore(), FarmPolicy(), clock, CoreConfig(max_batch=4))
    core.register_worker("w1", EMPTY)
    for n in range(10):  # one key: batches of 4, 4, 2 -> 3 x 2.0 + 7 x 0.5
        core.submit(Job(job_id=f"p{n}", number=n, checkpoint="a.safetensors", checkpoint_bytes=GB,
                        batch_key="k", est_run_s=2.0, est_extra_s=0.5))
    assert fleet_backlog_s(core.fleet, clock.now_s) == pytest.approx(3 * 2.0 + 7 * 0.5)
    assert fleet_busy(core.fleet) == 0
    batch = core.worker_ready("w1", EMPTY)  # 4 jobs leave the queue and run
    assert fleet_busy(core.fleet) == 1
    running_s = core.fleet.workers["w1"].busy_until_s - clock.now_s
    assert running_s >= 2.0 + 3 * 0.5
    queued_s = 2 * 2.0 + 4 * 0.5
    assert fleet_backlog_s(core.fleet, clock.now_s) == pytest.approx(queued_s + running_s)
    clock.now_s += running_s + 5  # overdue: a late batch adds nothing, it does not go negative
    assert fleet_backlog_s(core.fleet, clock.now_s) == pytest.approx(queued_s)
    for job_id in batch.job_ids:
        core.complete(job_id, {})
    core.clear_pending()
    assert fleet_backlog_s(core.fleet, clock.now_s) == 0.0
