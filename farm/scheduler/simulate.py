"""`farm simulate`: drive the real dispatcher on a simulated clock and compare policies.

Every policy runs the same trace (trace.py) through the same DispatcherCore, JobStore (in
memory), batch former and worker Residency; only the placement policy differs, so the
baselines batch equal keys too: what is compared is placement. A simulated worker
asks for a batch, loads its checkpoint (seconds from DESIGN.md for the tier it came from),
runs it (DESIGN.md's step and decode times for that batch size), completes its jobs and
asks again. Reported per policy:
  model_loads   checkpoint loads into VRAM (any source tier)
  makespan_s    time from the first arrival to the last completion
  gpu_busy      GPU seconds spent rendering / (workers x makespan); loads not counted
  p50/p99_wait  seconds from submit to the start of the job's batch
  lora_switches batches whose LoRA set differs from what their worker applied to that
                checkpoint last (each costs costs.lora_switch_s, patch time, on that worker)

lower_bound_loads: every worker starts empty, so a checkpoint is loaded at least once on
each worker that ever runs it. Let work_c be c's GPU seconds at the batch limit (its
cheapest) and T* the ideal makespan: the largest of (total work / workers) and, for every
arrival time t, t + (work arriving at or after t) / workers. A schedule that finishes by T*
gives c at most T* seconds per worker, so c needs at least ceil(work_c / T*) workers, and
at least one: the bound is the sum over checkpoints. It bounds the loads of schedules that
finish as fast as possible; a slower schedule can get by with fewer.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import time
from dataclasses import dataclass

from farm.records.residency import (
    GB,
    LoadCostModel,
    LoraSet,
    Residency,
    Tier,
    seed_load_s,
)
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.costs import lora_switch_s, mixed_batch_s
from farm.scheduler.jobs import Job
from farm.scheduler.placement import POLICIES, FarmPolicy, PlacementPolicy
from farm.scheduler.store import JobStore
from farm.scheduler.trace import TraceJob, TraceSpec

POLICY_NAMES = tuple(POLICIES)  # farm, round_robin, least_loaded, pressure


@dataclass(frozen=True)
class PolicyResult:
    """One policy's figures: the JSON object `farm simulate --json` prints per policy."""
    model_loads: int  # checkpoint loads into VRAM, from any tier
    makespan_s: float  # first arrival (t = 0) to last completion
    gpu_busy: float  # rendering seconds / (workers x makespan); loading is not rendering
    p50_wait_s: float  # median seconds from submit to the start of the job's batch
    p99_wait_s: float  # 99th percentile of the same
    lora_switches: int = 0  # batches that changed their worker's applied LoRA set


@dataclass(frozen=True)
class RunStats:
    """What the readable table shows besides the JSON figures."""
    mean_batch: float  # jobs per batched call
    wall_s: float  # real seconds the simulation took


class SimClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def make_policy(name: str, max_wait_s: float | None = None) -> PlacementPolicy:
    if name == "farm" and max_wait_s is not None:
        return FarmPolicy(max_wait_s=max_wait_s)
    return POLICIES[name]()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Simulation:
    """One policy on one trace: simulated workers around the real DispatcherCore."""

    def __init__(self, spec: TraceSpec, trace: list[TraceJob], policy: PlacementPolicy):
        self.spec, self.trace = spec, trace
        self.clock = SimClock()
        self.core = DispatcherCore(JobStore(":memory:"), policy, self.clock,
                                   CoreConfig(max_batch=spec.max_batch), LoadCostModel())
        self.templates = {job.template.batch_key: job.template for job in trace}  # key -> a Template of it
        self.steps = {job.job_id: job.template.steps for job in trace}  # a key's jobs may differ in steps
        self.residency = {f"w{i:04d}": Residency(int(spec.gpu_gb * GB), int(spec.pinned_gb * GB),
                                                 int(spec.disk_gb * GB)) for i in range(spec.workers)}
        self.running: dict[str, tuple[str, ...]] = {}  # worker_id -> job ids of its batch in flight
        self.ends: list[tuple[float, int, str]] = []  # heap of (time, seq, worker_id): a batch ends
        self.loads = self.batches = self.batched_jobs = self.lora_switches = 0
        self.applied: dict[str, tuple[str, LoraSet]] = {}  # worker_id -> (checkpoint, LoRA set) it patched last
        self.busy_s = 0.0  # rendering seconds, summed over workers
        self.waits: list[float] = []  # submit -> batch start, per job
        self.end_s = 0.0  # last completion

    def run(self) -> tuple[PolicyResult, RunStats]:
        started = time.perf_counter()
        for worker_id in self.residency:
            self.core.register_worker(worker_id)
            self.dispatch(worker_id)
        arrivals, tick_at = iter(self.trace), math.inf
        upcoming = next(arrivals, None)
        while upcoming is not None or self.ends or tick_at < math.inf:
            arrival_s = upcoming.arrival_s if upcoming is not None else math.inf
            end_s = self.ends[0][0] if self.ends else math.inf
            if arrival_s <= min(end_s, tick_at):
                self.clock.now_s = arrival_s
                self.arrive(upcoming)
                upcoming = next(arrivals, None)
            elif end_s <= tick_at:
                self.clock.now_s, _, worker_id = heapq.heappop(self.ends)
                self.finish(worker_id)
            else:
                self.clock.now_s = tick_at
                for worker_id in self.core.tick():
                    self.dispatch(worker_id)
                tick_at = math.inf  # nothing new can fall due before the next event
                continue
            due = self.core.due_s()
            tick_at = math.inf if due is None else max(due, self.clock.now_s)
        stranded = self.core.snapshot().pending
        if stranded:
            raise RuntimeError(f"{self.core.policy.name}: {len(stranded)} jobs never ran "
                               f"(first {stranded[0].job_id}); the policy left idle workers idle")
        return self.result(), RunStats(self.batched_jobs / max(self.batches, 1),
                                       time.perf_counter() - started)

    def arrive(self, item: TraceJob) -> None:
        t = item.template
        placement = self.core.submit(Job(
            job_id=item.job_id, number=self.clock.now_s, checkpoint=t.checkpoint,
            checkpoint_bytes=t.arch.checkpoint_bytes, batch_key=t.batch_key,
            est_run_s=t.est_run_s, est_extra_s=t.est_extra_s, loras=t.loras))
        if placement.wake:
            self.dispatch(placement.worker_id)

    def finish(self, worker_id: str) -> None:
        self.end_s = self.clock.now_s
        for job_id in self.running.pop(worker_id):
            self.core.complete(job_id, {})
        self.dispatch(worker_id)

    def dispatch(self, worker_id: str) -> None:
        """An idle worker asks for work; it loads (DESIGN.md's time for the tier the
        checkpoint comes from) and renders (DESIGN.md's time for the batch size)."""
        if worker_id in self.running:
            return
        residency = self.residency[worker_id]
        lora_checkpoint, loras = self.applied.get(worker_id, (None, ()))
        report = dataclasses.replace(residency.report(), lora_checkpoint=lora_checkpoint, loras=loras)
        batch = self.core.worker_ready(worker_id, report)
        if batch is None:
            return
        template = self.templates[batch.batch_key]
        size = template.arch.checkpoint_bytes
        applied = report.applied_loras(template.checkpoint)  # before the load: what is patched in now
        outcome = residency.load(template.checkpoint, size, batch.keep)
        load_s = seed_load_s(outcome.source, size)
        if outcome.source is not Tier.GPU:
            self.loads += 1
            self.core.observe_load(outcome.source, size, load_s)
        if applied != template.loras:
            self.lora_switches += 1
            load_s += lora_switch_s(applied, template.loras)
        self.applied[worker_id] = (template.checkpoint, template.loras)
        run_s = mixed_batch_s(template.arch, [self.steps[job_id] for job_id in batch.job_ids])
        self.busy_s += run_s
        self.batches += 1
        self.batched_jobs += len(batch.jobs)
        self.waits.extend(self.clock.now_s - job.created_s for job in batch.jobs)
        self.running[worker_id] = batch.job_ids
        heapq.heappush(self.ends, (self.clock.now_s + load_s + run_s, self.batches, worker_id))

    def result(self) -> PolicyResult:
        waits = sorted(self.waits)
        end_s = self.end_s
        return PolicyResult(
            model_loads=self.loads, makespan_s=round(end_s, 3),
            gpu_busy=round(self.busy_s / (self.spec.workers * end_s), 4) if end_s else 0.0,
            p50_wait_s=round(_percentile(waits, 0.50), 3),
            p99_wait_s=round(_percentile(waits, 0.99), 3), lora_switches=self.lora_switches)


def run_policy(spec: TraceSpec, trace: list[TraceJob],
               policy: PlacementPolicy) -> tuple[PolicyResult, RunStats]:
    return Simulation(spec, trace, policy).run()


def ideal_makespan_s(workers: int, trace: list[TraceJob]) -> float:
    """T*: no schedule finishes sooner (see the module docstring)."""
    best, suffix = 0.0, 0.0
    for job in reversed(trace):
        suffix += job.template.image_s
        best = max(best, job.arrival_s + suffix / workers, job.arrival_s + job.template.image_s)
    return best


def lower_bound_loads(workers: int, trace: list[TraceJob]) -> int:
    t_star = ideal_makespan_s(workers, trace)
    work: dict[str, float] = {}
    for job in trace:
        work[job.template.checkpoint] = work.get(job.template.checkpoint, 0.0) + job.template.image_s
    return sum(max(1, math.ceil(w / t_star - 1e-9)) for w in work.values())
