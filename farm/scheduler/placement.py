"""Placement policies: which worker runs a job, and what an idle worker takes next.

Every policy answers two questions, asked by the DispatcherCore:
  choose(job, fleet, now_s) -> Placement   when a job is submitted or requeued
  pick(worker, fleet, now_s) -> Pick|None  when a worker asks for its next batch
A push policy reserves the job for one worker's own queue at submit; a pull policy leaves
it in the shared pool, and its Placement is a forecast (which worker to wake, and when the
job should start). The farm's policy pulls: the decision is made when a GPU is free, with
what is queued then, so jobs of one key gather into full batches.

Baselines, for `farm simulate`:
  RoundRobinPolicy   push, workers in turn
  LeastLoadedPolicy  push, the worker with the fewest jobs (ComfyUI-Distributed: shortest
                     queue, no model awareness)
  PressurePolicy     pull, SwarmUI-like: a free backend takes work for a model it has
                     loaded, else loads the model with the most waiting requests; a model
                     no backend holds is sent to the least recently used idle backend
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from farm.scheduler.fleet import Fleet, WorkerView
from farm.scheduler.jobs import Job
from farm.scheduler.residency import Tier


@dataclass(frozen=True)
class Placement:
    """Where a job went (push) or is expected to run (pull); the answer to a submit."""
    job_id: str
    worker_id: str | None  # worker expected to run it; None: none can be named yet
    reserved: bool  # True: waits in that worker's own queue; False: in the shared pool
    source_tier: Tier  # where that worker would load the job's checkpoint from
    expected_start_s: float  # dispatcher-clock time the job should start
    expected_finish_s: float  # ... and end
    wake: bool = False  # that worker is idle: the caller should ask it to pull work now


@dataclass(frozen=True)
class Pick:
    """What a ready worker runs next: the best jobs of one key from one queue."""
    owner: str | None  # queue to take from: a worker's own queue, or None for the pool
    batch_key: str  # group key of the batch


class PlacementPolicy(Protocol):
    name: str  # the label `farm simulate` prints

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement: ...

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None: ...

    def due_s(self, fleet: Fleet) -> float | None:
        """When an idle worker must next be asked to pull even without new work (None: never)."""
        ...


def _reserve(job: Job, view: WorkerView, fleet: Fleet, now_s: float) -> Placement:
    """Put the job at the back of one worker's own queue (the push policies)."""
    source = fleet.source(view, job.checkpoint)
    start = now_s + view.backlog_s(now_s)
    finish = start + fleet.switch_s(view, job.checkpoint, job.checkpoint_bytes) + job.est_run_s
    return Placement(job.job_id, view.worker_id, True, source, start, finish)


def _own_head(worker: WorkerView) -> Pick | None:
    """Run the worker's own queue in priority order, batching the head job's key."""
    head = worker.queue.head()
    return None if head is None else Pick(worker.worker_id, head.group_key)


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0  # index of the next worker in registration order

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        view = fleet.workers[fleet.order[self._turn % len(fleet.order)]]
        self._turn += 1
        return _reserve(job, view, fleet, now_s)

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None:
        return _own_head(worker)

    def due_s(self, fleet: Fleet) -> float | None:
        return None


class LeastLoadedPolicy:
    name = "least_loaded"

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        return _reserve(job, fleet.least_loaded(), fleet, now_s)

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None:
        return _own_head(worker)

    def due_s(self, fleet: Fleet) -> float | None:
        return None


def _forecast(job: Job, view: WorkerView | None, fleet: Fleet, start_s: float,
              now_s: float) -> Placement:
    """A pool placement: the job waits in the shared pool; `view` is the worker to wake."""
    if view is None:
        return Placement(job.job_id, None, False, Tier.STORE, start_s, start_s + job.est_run_s)
    switch_s = fleet.switch_s(view, job.checkpoint, job.checkpoint_bytes)
    finish = start_s + switch_s + job.est_run_s
    return Placement(job.job_id, view.worker_id, False, fleet.source(view, job.checkpoint),
                     start_s, finish)


class PressurePolicy:
    name = "pressure"

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        view = fleet.idle_holder(job.checkpoint) or next(fleet.idle_workers(), None)
        if view is not None:
            return _forecast(job, view, fleet, now_s, now_s)
        holders = fleet.holders(job.checkpoint)
        holder = fleet.workers[next(iter(holders))] if holders else None
        start = now_s + (holder.backlog_s(now_s) if holder else 0.0)
        return _forecast(job, holder, fleet, start, now_s)

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None:
        pool = fleet.pool
        job = pool.best_head(worker.gpu)
        if job is None:
            wanted = max(pool.checkpoints(), key=pool.count_of, default=None)
            job = pool.best_head({wanted}) if len(pool) else None
        return None if job is None else Pick(None, job.group_key)

    def due_s(self, fleet: Fleet) -> float | None:
        return None


class FarmPolicy:
    """Expected-finish-first placement over residency tiers, with a starvation bound.

    A job for checkpoint c can run on a worker that holds c in VRAM (a holder), after the
    holders have worked off c's queued jobs: about work_s(c) / holders(c) from now. Or an
    idle worker can load c (seconds from its nearest tier, learned per tier) and start now.
    The idle worker takes it only when that brings the start forward by more than
    `replicate_margin_s`: every load evicts something that may be needed again, and a
    hot checkpoint gains a replica exactly when its holders fall that far behind. A
    checkpoint no worker holds has no holders to wait for, so it is always taken (cold
    checkpoints never wait for a hot one to drain). And no job waits longer than
    `max_wait_s`: a worker that asks for work then takes the oldest job, whatever the load.
    """
    name = "farm"

    def __init__(self, replicate_margin_s: float = 10.0, max_wait_s: float = 120.0):
        self.replicate_margin_s = replicate_margin_s  # start-time gain a new replica must bring
        self.max_wait_s = max_wait_s  # starvation bound on any job's wait in the pool

    def holder_wait_s(self, checkpoint: str | None, fleet: Fleet) -> float:
        """Expected wait for c's holders to reach a job queued now (inf: no holder)."""
        count = fleet.holder_count(checkpoint)
        return math.inf if count == 0 else fleet.pool.work_s(checkpoint) / count

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        idle_holder = fleet.idle_holder(job.checkpoint)
        if idle_holder is not None:
            return _forecast(job, idle_holder, fleet, now_s, now_s)
        wait_s = self.holder_wait_s(job.checkpoint, fleet)
        cold = self._cheapest_idle(job, fleet)
        if cold is not None:
            switch_s = fleet.switch_s(cold, job.checkpoint, job.checkpoint_bytes)
            if wait_s - switch_s > self.replicate_margin_s:
                return _forecast(job, cold, fleet, now_s, now_s)
        if math.isinf(wait_s):  # nobody holds it, nobody is idle: the bound applies
            return _forecast(job, None, fleet, now_s + self.max_wait_s, now_s)
        holders = fleet.holders(job.checkpoint)
        holder = fleet.workers[next(iter(holders))]
        return _forecast(job, holder, fleet, now_s + min(wait_s, self.max_wait_s), now_s)

    @staticmethod
    def _cheapest_idle(job: Job, fleet: Fleet, look: int = 8) -> WorkerView | None:
        """Of the `look` longest-idle workers, the one that loads the checkpoint fastest."""
        best, best_s = None, math.inf
        for count, view in enumerate(fleet.idle_workers()):
            if count == look:
                break
            switch_s = fleet.switch_s(view, job.checkpoint, job.checkpoint_bytes)
            if switch_s < best_s:
                best, best_s = view, switch_s
        return best

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None:
        pool = fleet.pool
        # 1. The starvation bound comes first: an overdue job runs next, wherever it is.
        oldest = pool.oldest()
        if oldest is not None and now_s - oldest.created_s >= self.max_wait_s:
            return Pick(None, oldest.group_key)
        # 2. Work for a checkpoint already in VRAM costs no load.
        job = pool.best_head(worker.gpu)
        if job is not None:
            return Pick(None, job.group_key)
        # 3. Steal: the checkpoint whose holders are furthest behind, if loading it here
        #    starts its work sooner by more than the margin.
        best, best_gain = None, self.replicate_margin_s
        for checkpoint in pool.checkpoints():
            size = pool.head(next(iter(pool.keys_of(checkpoint)))).checkpoint_bytes
            gain = self.holder_wait_s(checkpoint, fleet) - fleet.switch_s(worker, checkpoint, size)
            if gain > best_gain:
                best, best_gain = checkpoint, gain
        if best is None:
            return None
        return Pick(None, pool.best_head({best}).group_key)

    def due_s(self, fleet: Fleet) -> float | None:
        oldest = fleet.pool.oldest()
        return None if oldest is None else oldest.created_s + self.max_wait_s


POLICIES: dict[str, type] = {
    "farm": FarmPolicy,
    "round_robin": RoundRobinPolicy,
    "least_loaded": LeastLoadedPolicy,
    "pressure": PressurePolicy,
}
