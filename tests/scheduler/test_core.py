"""DispatcherCore: dead workers, retries, cancel / interrupt, restart, plain messages."""
import pickle

from farm.records.residency import GB, ResidencyReport
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.placement import FarmPolicy, RoundRobinPolicy
from farm.scheduler.store import JobStore

EMPTY = ResidencyReport(gpu_free_bytes=12 * 10**9)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def make_core(store=None, policy=None, max_attempts=3, workers=("w1", "w2")):
    clock = Clock()
    core = DispatcherCore(store or JobStore(), policy or FarmPolicy(), clock,
                          CoreConfig(max_batch=8, max_attempts=max_attempts))
    for worker_id in workers:
        core.register_worker(worker_id, EMPTY)
    return core, clock


def job(n: int, key: str = "k") -> Job:
    return Job(job_id=f"p{n}", number=n, checkpoint="a.safetensors", checkpoint_bytes=2 * GB,
               batch_key=key, est_run_s=1.0, est_extra_s=0.2)


def test_a_dead_workers_jobs_go_back_and_run_elsewhere():
    core, clock = make_core()
    for n in range(3):
        core.submit(job(n))
    batch = core.worker_ready("w1", EMPTY)
    assert batch.job_ids == ("p0", "p1", "p2")
    clock.now_s = 5.0
    assert sorted(core.requeue_worker("w1")) == ["p0", "p1", "p2"]
    again = core.store.get("p0")
    assert (again.state, again.attempts, again.worker_id) == (JobState.QUEUED, 1, None)
    rerun = core.worker_ready("w2", EMPTY)
    assert rerun.job_ids == ("p0", "p1", "p2")
    assert core.store.get("p0").attempts == 2
    assert "w1" not in core.fleet.workers


def test_a_job_that_keeps_losing_its_worker_fails_with_the_reason():
    core, _ = make_core(max_attempts=1)
    core.submit(job(0))
    core.worker_ready("w1", EMPTY)
    core.requeue_worker("w1")
    failed = core.store.get("p0")
    assert failed.state is JobState.FAILED and "worker w1 was lost" in failed.error
    assert core.worker_ready("w2", EMPTY) is None


def test_reserved_jobs_of_a_dead_worker_are_placed_again():
    core, _ = make_core(policy=RoundRobinPolicy())
    placed = [core.submit(job(n, key=f"k{n}")).worker_id for n in range(4)]
    assert placed == ["w1", "w2", "w1", "w2"]
    assert sorted(core.requeue_worker("w2")) == ["p1", "p3"]
    taken = []
    while (batch := core.worker_ready("w1", EMPTY)) is not None:
        taken += batch.job_ids
        for job_id in batch.job_ids:
            core.complete(job_id, {})
    assert sorted(taken) == ["p0", "p1", "p2", "p3"]


def test_late_completion_from_a_worker_thought_lost_wins_once():
    core, _ = make_core()
    core.submit(job(0))
    core.worker_ready("w1", EMPTY)
    core.requeue_worker("w1")
    assert core.complete("p0", {"9": {"images": []}}) is True  # the lost worker did finish
    assert core.worker_ready("w2", EMPTY) is None  # so it is no longer queued
    assert core.complete("p0", {}) is False
    assert core.store.get("p0").state is JobState.DONE


def test_fail_retries_worker_faults_but_not_input_faults():
    core, _ = make_core(max_attempts=2)
    core.submit(job(0))
    assert core.worker_ready("w1", EMPTY).job_ids == ("p0",)
    assert core.fail("p0", "CUDA out of memory", retryable=True) is JobState.QUEUED
    assert core.worker_ready("w1", EMPTY).job_ids == ("p0",)
    assert core.fail("p0", "CUDA out of memory", retryable=True) is JobState.FAILED
    failed = core.store.get("p0")
    assert failed.attempts == 2 and "gave up after 2 attempts: CUDA out of memory" == failed.error

    core.submit(job(1))
    assert core.worker_ready("w1", EMPTY).job_ids == ("p1",)
    assert core.fail("p1", "node 3: bad input") is JobState.FAILED
    assert core.store.get("p1").error == "node 3: bad input"
    assert core.worker_ready("w1", EMPTY) is None


def test_cancel_queued_and_interrupt_running():
    core, _ = make_core()
    core.submit(job(0))
    core.submit(job(1, key="other"))
    assert core.cancel("p1") is True
    assert core.store.get("p1") is None  # a queued job leaves without a history entry, as in ComfyUI
    assert core.cancel("p1") is False
    running = core.worker_ready("w1", EMPTY)
    assert running.job_ids == ("p0",) and not core.is_interrupted("p0")
    assert core.interrupt() == ["p0"] and core.is_interrupted("p0")
    assert core.fail("p0", "Interrupted", retryable=True) is JobState.CANCELLED
    assert core.store.get("p0").state is JobState.CANCELLED
    assert core.cancel("p0") is False  # finished


def test_restart_rebuilds_the_queue_from_the_file(tmp_path):
    path = tmp_path / "queue.db"
    core, _ = make_core(JobStore(path))
    for n in range(3):
        core.submit(job(n, key=f"k{n}"))
    assert core.worker_ready("w1", EMPTY).job_ids == ("p0",)
    core.store.close()

    restarted, _ = make_core(JobStore(path))
    snapshot = restarted.snapshot()
    assert snapshot.running == ()
    assert [(j.job_id, j.attempts) for j in snapshot.pending] == [("p0", 1), ("p1", 0), ("p2", 0)]
    assert restarted.worker_ready("w2", EMPTY).job_ids == ("p0",)


def test_messages_are_plain_picklable_dataclasses():
    core, _ = make_core()
    placement = core.submit(job(0))
    core.submit(job(1))
    batch = core.worker_ready("w1", EMPTY)
    for message in (placement, batch, core.snapshot(), EMPTY):
        assert pickle.loads(pickle.dumps(message)) == message


def test_jobs_recovered_before_any_worker_registers_still_run(tmp_path):
    path = tmp_path / "queue.db"
    core, _ = make_core(JobStore(path), policy=RoundRobinPolicy())
    core.submit(job(0))
    core.store.close()
    restarted, _ = make_core(JobStore(path), policy=RoundRobinPolicy(), workers=())
    restarted.register_worker("w9", EMPTY)
    assert restarted.worker_ready("w9", EMPTY).job_ids == ("p0",)
