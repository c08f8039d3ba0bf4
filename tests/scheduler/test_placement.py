"""Placement policies, driven through the real DispatcherCore with an injected clock."""
import pytest

from farm.records.residency import GB, LoadCostModel, Residency, ResidencyReport, Tier
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.fleet import Fleet
from farm.scheduler.jobs import Job
from farm.scheduler.placement import (
    FarmPolicy,
    LeastLoadedPolicy,
    PressurePolicy,
    RoundRobinPolicy,
)
from farm.scheduler.replicas import DemandRate, plan_replicas
from farm.scheduler.store import JobStore

SDXL = int(5.1 * GB)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def worker(*held: str) -> ResidencyReport:
    """What a real 12 GB worker reports after loading these checkpoints."""
    res = Residency(gpu_bytes=12 * GB, pinned_bytes=16 * GB, disk_bytes=200 * GB)
    for name in held:
        res.load(name, SDXL)
    return res.report()


def core_with(policy, workers: dict[str, ResidencyReport], max_batch=8):
    clock = Clock()
    core = DispatcherCore(JobStore(), policy, clock, CoreConfig(max_batch=max_batch))
    for worker_id, report in workers.items():
        core.register_worker(worker_id, report)
    return core, clock


def make_job(n: int, checkpoint: str = "A", run_s: float = 2.0, extra_s: float = 1.0) -> Job:
    return Job(job_id=f"{checkpoint}{n}", number=n, checkpoint=checkpoint, checkpoint_bytes=SDXL,
               batch_key=f"{checkpoint}|25", est_run_s=run_s, est_extra_s=extra_s)


def test_farm_prefers_the_vram_holder_until_its_backlog_outweighs_a_load():
    """A holder of A in VRAM is busy; an idle worker's VRAM is full of checkpoints nobody
    queued (a load there evicts one). Jobs for A stay with the holder while its queue is
    short; the first job that would wait longer than the idle worker's load (3.7 s from
    cold disk, DESIGN.md) plus the 30 s margin goes there."""
    # One replica plan, made at the first submit after the warm-up, from a quiet history:
    # it keeps A where it is and asks nothing of the idle worker.
    policy = FarmPolicy(burst_margin_s=30.0, demand_warmup_s=100.0, replan_every_s=1e9)
    core, clock = core_with(policy, {"hot": worker("A"), "cold": worker("B", "C")})
    assert core.worker_ready("cold", worker("B", "C")) is None  # idle
    core.submit(make_job(0))
    assert core.worker_ready("hot", worker("A")).job_ids == ("A0",)  # busy from now on
    clock.now_s = 200.0
    # Queued A work for n jobs in batches of 8: ceil(n/8) * 2.0 s + the rest * 1.0 s.
    # It first exceeds 30 + 3.7 s at n = 30 (4 * 2 + 26 * 1 = 34 s; n = 29 gives 33 s).
    placements = [core.submit(make_job(n)) for n in range(1, 32)]
    targets = [p.worker_id for p in placements]
    assert targets[:30] == ["hot"] * 30 and not any(p.wake for p in placements[:30])
    assert targets[30] == "cold" and placements[30].wake
    assert placements[30].source_tier is Tier.STORE
    batch = core.worker_ready("cold", worker("B", "C"))
    assert batch.checkpoint == "A" and batch.source_tier is Tier.STORE
    assert batch.expected_load_s == pytest.approx(3.7)
    assert len(batch.jobs) == 8 and batch.job_ids[0] == "A1"  # the best-priority jobs of A


def test_once_submissions_stop_an_idle_worker_helps_drain_the_queue():
    policy = FarmPolicy(burst_margin_s=30.0, quiet_after_s=5.0, demand_warmup_s=100.0)
    core, clock = core_with(policy, {"hot": worker("A"), "cold": worker("B", "C")})
    core.worker_ready("cold", worker("B", "C"))
    core.submit(make_job(0))
    core.worker_ready("hot", worker("A"))
    clock.now_s = 200.0
    for n in range(1, 6):  # 2 + 4 * 1.0 = 6 s queued: well inside the 30 s margin
        assert core.submit(make_job(n)).worker_id == "hot"
    assert core.due_s() == 205.0
    clock.now_s = 204.0
    assert core.tick() == []
    clock.now_s = 205.0  # quiet: 6 s of queue beats the 3.7 s load now
    assert core.tick() == ["cold"]
    assert core.worker_ready("cold", worker("B", "C")).job_ids == ("A1", "A2", "A3", "A4", "A5")


def test_a_worker_with_room_takes_overflow_once_it_saves_its_load_time():
    """A worker that just joined (nothing in VRAM: a load evicts nothing) needs no margin
    and no replica plan: it loads A as soon as A's holder is behind by more than the load
    takes (3.7 s from cold disk), even while jobs keep arriving."""
    policy = FarmPolicy(burst_margin_s=30.0, demand_warmup_s=100.0, replan_every_s=1e9)
    core, clock = core_with(policy, {"hot": worker("A")})
    core.submit(make_job(0))
    assert core.worker_ready("hot", worker("A")).job_ids == ("A0",)  # busy from now on
    for n in range(1, 4):
        core.submit(make_job(n))  # 2 + 2 * 1.0 = 4 s queued: more than the 3.7 s load
    core.register_worker("joined", worker())
    batch = core.worker_ready("joined", worker())
    assert batch.checkpoint == "A" and batch.source_tier is Tier.STORE
    assert batch.job_ids == ("A1", "A2", "A3")


def test_a_job_that_needs_no_checkpoint_goes_to_any_idle_worker():
    """A workflow with no model loader (an image-only graph) waits for nobody's load and
    is not held back by the starvation bound: the first worker that asks takes it."""
    core, _ = core_with(FarmPolicy(), {"hot": worker("A")})
    core.submit(make_job(0))
    core.worker_ready("hot", worker("A"))  # busy
    core.register_worker("idle", worker())
    assert core.worker_ready("idle", worker()) is None  # nothing queued yet: it waits
    none_job = Job(job_id="x", number=1, checkpoint=None, checkpoint_bytes=0, batch_key="none",
                   est_run_s=0.1, est_extra_s=0.0)
    placement = core.submit(none_job)
    assert (placement.worker_id, placement.wake) == ("idle", True)
    assert core.worker_ready("idle", worker()).job_ids == ("x",)


def test_farm_sends_a_cold_checkpoint_to_an_idle_worker_at_once():
    core, clock = core_with(FarmPolicy(), {"hot": worker("A"), "idle": worker()})
    core.worker_ready("idle", worker())
    core.submit(make_job(0))
    core.worker_ready("hot", worker("A"))
    placement = core.submit(make_job(1, checkpoint="B"))
    assert (placement.worker_id, placement.wake) == ("idle", True)
    assert core.worker_ready("idle", worker()).checkpoint == "B"


def test_starvation_bound_lets_a_cold_job_past_a_stream_of_hot_ones():
    """One worker with a never-ending queue of its own checkpoint A keeps running A (no
    load) until the job for B has waited max_wait_s; the next batch is B's."""
    core, clock = core_with(FarmPolicy(max_wait_s=60.0), {"w": worker("A")})
    number = 0

    def feed(count):
        nonlocal number
        for _ in range(count):
            core.submit(make_job(number))
            number += 1

    feed(8)
    clock.now_s = 1.0
    core.submit(make_job(0, checkpoint="B"))
    started_b = None
    while started_b is None:
        batch = core.worker_ready("w", worker("A"))
        if batch.checkpoint == "B":
            started_b = clock.now_s
            break
        clock.now_s += 9.0  # the batch runs
        for job_id in batch.job_ids:
            core.complete(job_id, {})
        feed(8)  # the hot stream never dries up
    assert 1.0 + 60.0 <= started_b <= 1.0 + 60.0 + 9.0


def test_round_robin_and_least_loaded_reserve_workers():
    core, _ = core_with(RoundRobinPolicy(), {f"w{i}": worker() for i in range(3)})
    assert [core.submit(make_job(n)).worker_id for n in range(4)] == ["w0", "w1", "w2", "w0"]

    core, _ = core_with(LeastLoadedPolicy(), {f"w{i}": worker() for i in range(3)})
    first = [core.submit(make_job(n)).worker_id for n in range(3)]
    assert first == ["w0", "w1", "w2"]
    core.worker_ready("w1", worker())  # w1 takes its job (running counts as load)
    for job_id in core.worker_ready("w0", worker()).job_ids:
        core.complete(job_id, {})
    core.worker_ready("w0", worker())  # w0 finished and has nothing: the least loaded
    assert core.submit(make_job(9)).worker_id == "w0"


def test_pressure_loads_the_most_requested_model_on_a_free_backend():
    core, _ = core_with(PressurePolicy(), {"busy": worker("A"), "free": worker("A")})
    for n in range(2):
        core.submit(make_job(n, checkpoint="B"))
    for n in range(3):
        core.submit(make_job(n, checkpoint="C"))
    core.submit(make_job(0, checkpoint="A"))
    assert core.worker_ready("busy", worker("A")).checkpoint == "A"  # its own model first
    assert core.worker_ready("free", worker("A")).checkpoint == "C"  # 3 requests beat 2


def test_replica_plan_is_proportional_sticky_and_fits_vram():
    fleet = Fleet(8, LoadCostModel())
    for i, held in enumerate([(), (), (), ("B",)]):
        fleet.set_residency(fleet.add_worker(f"w{i}"), worker(*held))
    demand = {"A": 2.0, "B": 0.5, "C": 0.1}
    plan = plan_replicas(demand, {c: SDXL for c in demand}, fleet, now_s=0.0, target_util=0.85,
                         slack=0.25, balance_gap=9.0)
    # Fleet load 2.6 / 4 workers < 0.85, so shares are demand / 0.85: A 2.35 -> 3 replicas.
    assert plan.replicas == {"A": 3, "B": 1, "C": 1}
    assert "B" in plan.wants("w3")  # kept where it is loaded
    held = [c for w in fleet.workers for c in plan.wants(w)]
    assert sorted(held) == ["A", "A", "A", "B", "C"]
    assert all(len(plan.wants(w)) * SDXL <= 12 * GB for w in fleet.workers)


def test_demand_rate_converges_to_the_submitted_work_rate():
    rate = DemandRate(0.0)
    for second in range(1, 601):
        rate.add(2.0, float(second), window_s=300.0)  # 2 GPU seconds every second
    assert rate.rate(600.0, window_s=300.0, warmup_s=60.0) == pytest.approx(2.0, rel=0.01)
