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

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Protocol

from farm.records.residency import Tier
from farm.scheduler.fleet import Fleet, WorkerView
from farm.scheduler.jobs import Job, batch_run_s
from farm.scheduler.replicas import DemandRate, ReplicaPlan, plan_replicas


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
    keep: frozenset[str] = frozenset()  # checkpoints the worker should evict last


class PlacementPolicy(Protocol):
    name: str  # the label `farm simulate` prints

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement: ...

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None: ...

    def due_s(self, fleet: Fleet) -> float | None:
        """When an idle worker must next be asked to pull even without new work (None: never)."""
        ...


def _reserve(job: Job, view: WorkerView | None, fleet: Fleet, now_s: float) -> Placement:
    """Put the job at the back of one worker's own queue (the push policies); with no
    worker registered yet, into the pool, which the first worker drains."""
    if view is None:
        return _forecast(job, None, fleet, now_s, now_s)
    source = fleet.source(view, job.checkpoint)
    start = now_s + view.backlog_s(now_s)
    finish = start + fleet.switch_s(view, job.checkpoint, job.checkpoint_bytes, job.loras) + job.est_run_s
    return Placement(job.job_id, view.worker_id, True, source, start, finish)


def _own_head(worker: WorkerView, fleet: Fleet) -> Pick | None:
    """Run the worker's own queue in priority order, batching the head job's key (then
    anything left in the pool from before workers registered)."""
    for owner, queue in ((worker.worker_id, worker.queue), (None, fleet.pool)):
        head = queue.head()
        if head is not None:
            return Pick(owner, head.group_key)
    return None


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0  # index of the next worker in registration order

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        if not fleet.order:
            return _reserve(job, None, fleet, now_s)
        view = fleet.workers[fleet.order[self._turn % len(fleet.order)]]
        self._turn += 1
        return _reserve(job, view, fleet, now_s)

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None:
        return _own_head(worker, fleet)

    def due_s(self, fleet: Fleet) -> float | None:
        return None


class LeastLoadedPolicy:
    name = "least_loaded"

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        return _reserve(job, fleet.least_loaded() if fleet.workers else None, fleet, now_s)

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None:
        return _own_head(worker, fleet)

    def due_s(self, fleet: Fleet) -> float | None:
        return None


def _forecast(job: Job, view: WorkerView | None, fleet: Fleet, start_s: float,
              now_s: float) -> Placement:
    """A pool placement: the job waits in the shared pool; `view` is the worker to wake."""
    if view is None:
        return Placement(job.job_id, None, False, Tier.STORE, start_s, start_s + job.est_run_s)
    switch_s = fleet.switch_s(view, job.checkpoint, job.checkpoint_bytes, job.loras)
    finish = start_s + switch_s + job.est_run_s
    return Placement(job.job_id, view.worker_id, False, fleet.source(view, job.checkpoint),
                     start_s, finish)


class PressurePolicy:
    name = "pressure"

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        view = fleet.idle_holder(job.checkpoint, job.loras) or next(fleet.idle_workers(), None)
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
    """Residency-aware pull placement: planned replicas, burst relief, a wait bound.

    Jobs wait in one shared pool. Workers run queued work for checkpoints they hold in
    VRAM, best priority first, and load nothing while they have such work. A worker with
    nothing of its own to do (or one that is idle when a job arrives) loads checkpoint c
    and takes c's best jobs when:
      - the replica plan wants c on this worker (replicas.py: hot checkpoints get workers
        in proportion to their demand, re-planned every `replan_every_s`; the first plan
        waits `demand_warmup_s` for demand to be measured);
      - nobody holds c (a cold checkpoint never waits behind hot ones);
      - c's holders are behind by more than this worker needs to load c, plus
        `burst_margin_s` while jobs keep arriving (a load must save a burst's worth of
        waiting), plus nothing once no job has arrived for `quiet_after_s` (the queue is
        draining; finishing it sooner is all that is left to win).
    That is "expected to finish first" with the cost of a load counted as more than its
    seconds: every load evicts something that may be needed again. A load that evicts
    nothing (a worker that just joined, or one with room to spare) needs neither the plan
    nor the margin: it pays once c's holders are behind by more than the load takes.
    Jobs that need no checkpoint go to any worker that asks. A load never evicts
    what the plan wants on this worker, nor the last copy of a checkpoint with queued
    jobs. No job waits longer than `max_wait_s`: a worker that asks for work takes the
    oldest job first once it is overdue, whatever the load costs.
    """
    name = "farm"

    def __init__(self, burst_margin_s: float = 60.0, max_wait_s: float = 120.0,
                 replan_every_s: float = 30.0, demand_window_s: float = 300.0,
                 demand_warmup_s: float = 60.0, target_util: float = 0.85,
                 balance_gap: float = 0.3, quiet_after_s: float = 5.0, slack: float = 0.25,
                 sample: int = 16):
        self.burst_margin_s = burst_margin_s  # holders' queued seconds that justify a load
        self.max_wait_s = max_wait_s  # starvation bound on any job's wait in the pool
        self.replan_every_s = replan_every_s  # how often replica targets are recomputed
        self.demand_window_s = demand_window_s  # time constant of the demand average
        self.demand_warmup_s = demand_warmup_s  # shortest history a rate is computed over
        self.target_util = target_util  # planned busy share of a replica
        self.balance_gap = balance_gap  # load gap between linked worker groups worth a bridge
        self.quiet_after_s = quiet_after_s  # no submit for this long: the queue is draining
        self.slack = slack  # fraction of a replica's worth of demand that does not get one
        self.sample = sample  # idle workers considered per submit (bounds the cost)
        self.plan = ReplicaPlan(-math.inf)  # current replica plan
        self._demand: dict[str, DemandRate] = {}  # checkpoint -> submitted work rate
        self._sizes: dict[str, int] = {}  # checkpoint -> bytes, as jobs report them
        self._warm_s = math.inf  # first submission + warm-up: the first plan is due then
        self._last_submit_s = -math.inf  # when choose() last saw a job

    # --- estimates ----------------------------------------------------------------------

    def demand(self, checkpoint: str, now_s: float) -> float:
        found = self._demand.get(checkpoint)
        return 0.0 if found is None else found.rate(now_s, self.demand_window_s, self.demand_warmup_s)

    def _observe(self, job: Job, max_batch: int, now_s: float) -> None:
        """Count the job's GPU seconds (at the batch limit, its cheapest) as demand."""
        if job.checkpoint is None:
            return
        if not self._demand:
            self._warm_s = now_s + self.demand_warmup_s  # no plan before demand is measured
        demand = self._demand.setdefault(job.checkpoint, DemandRate(now_s))
        demand.add(batch_run_s(job.est_run_s, job.est_extra_s, max_batch) / max_batch, now_s,
                   self.demand_window_s)
        self._sizes[job.checkpoint] = job.checkpoint_bytes

    def _replan(self, fleet: Fleet, now_s: float) -> None:
        if now_s - self.plan.made_s < self.replan_every_s or now_s < self._warm_s:
            return
        rates = {c: self.demand(c, now_s) for c in self._demand}
        self.plan = plan_replicas(rates, self._sizes, fleet, now_s, self.target_util,
                                  slack=self.slack, balance_gap=self.balance_gap)

    def load_score(self, worker: WorkerView, checkpoint: str | None, size_bytes: int,
                   fleet: Fleet, now_s: float) -> float | None:
        """Seconds c's holders are behind (inf: c has none), if `worker` should load c now;
        None when it should not (see the class docstring)."""
        if checkpoint is None or checkpoint in worker.gpu:
            return None
        keep = self.plan.wants(worker.worker_id)
        victims = worker.residency.victims(checkpoint, size_bytes, keep)
        for victim in victims:
            if victim in keep or (fleet.holder_count(victim) <= 1 and fleet.pool.count_of(victim)):
                return None
        count = fleet.holder_count(checkpoint)
        if count == 0:
            return math.inf
        behind_s = fleet.pool.work_s(checkpoint) / count
        if checkpoint in keep:
            return behind_s
        switch_s = fleet.switch_s(worker, checkpoint, size_bytes)
        if not victims:
            # Free room (a worker that just joined, or one with VRAM to spare): the load
            # costs its seconds and nothing else, so it pays as soon as it saves them.
            return behind_s if behind_s > switch_s else None
        if self.plan.made_s == -math.inf:
            return None  # no extra copies until demand is measured: the first plan places them
        margin_s = 0.0 if self._draining(now_s) else self.burst_margin_s
        if behind_s - switch_s > margin_s:
            return behind_s
        return None

    # --- decisions ----------------------------------------------------------------------

    def _draining(self, now_s: float) -> bool:
        return now_s - self._last_submit_s >= self.quiet_after_s

    def choose(self, job: Job, fleet: Fleet, now_s: float) -> Placement:
        self._last_submit_s = now_s
        self._observe(job, fleet.max_batch, now_s)
        self._replan(fleet, now_s)
        idle_holder = fleet.idle_holder(job.checkpoint, job.loras, self.sample)
        if idle_holder is not None:
            return _forecast(job, idle_holder, fleet, now_s, now_s)
        best, best_score = None, -math.inf
        for view in self._idle_candidates(job.checkpoint, fleet):
            score = self.load_score(view, job.checkpoint, job.checkpoint_bytes, fleet, now_s)
            if score is not None and score > best_score:
                best, best_score = view, score
        if best is not None:
            return _forecast(job, best, fleet, now_s, now_s)
        count = fleet.holder_count(job.checkpoint)
        if count == 0:  # nobody holds it, and no idle worker may load it: the bound applies
            return _forecast(job, None, fleet, now_s + self.max_wait_s, now_s)
        holder = fleet.workers[next(iter(fleet.holders(job.checkpoint)))]
        behind_s = fleet.pool.work_s(job.checkpoint) / count
        return _forecast(job, holder, fleet, now_s + min(behind_s, self.max_wait_s), now_s)

    def _idle_candidates(self, checkpoint: str | None, fleet: Fleet) -> list[WorkerView]:
        """Idle workers that load_score may accept for a new job of c, found without
        scanning the fleet: the idle workers the plan wants c on, then the `sample`
        longest idle (while c's holders are within the margin, only those with room to
        load c without evicting anything can qualify; load_score decides)."""
        planned = (fleet.workers.get(w) for w in self.plan.placed.get(checkpoint, ()))
        found = {view.worker_id: view for view in planned if view is not None and view.idle}
        for view in itertools.islice(fleet.idle_workers(), self.sample):
            found.setdefault(view.worker_id, view)
        return list(found.values())[:2 * self.sample]

    def pick(self, worker: WorkerView, fleet: Fleet, now_s: float) -> Pick | None:
        self._replan(fleet, now_s)
        pool = fleet.pool
        keep = self.plan.wants(worker.worker_id)
        # 1. The starvation bound comes first: an overdue job runs next, wherever it is.
        oldest = pool.oldest()
        if oldest is not None and now_s - oldest.created_s >= self.max_wait_s:
            return Pick(None, oldest.group_key, keep)
        # 2. Work for a checkpoint already in VRAM, or for none at all, costs no load.
        job = pool.best_head(worker.gpu | {None})
        if job is not None:
            return Pick(None, job.group_key, keep)
        # 3. Nothing of its own: load the checkpoint whose holders are furthest behind, of
        #    those it should take (load_score).
        best, best_score = None, -math.inf
        for checkpoint in pool.checkpoints():
            size = pool.head(next(iter(pool.keys_of(checkpoint)))).checkpoint_bytes
            score = self.load_score(worker, checkpoint, size, fleet, now_s)
            if score is not None and score > best_score:
                best, best_score = checkpoint, score
        if best is None:
            return None
        return Pick(None, pool.best_head({best}).group_key, keep)

    def due_s(self, fleet: Fleet) -> float | None:
        """The next moment an idle worker may have something to take without a new job:
        the oldest job's wait bound, or the queue turning quiet."""
        oldest = fleet.pool.oldest()
        if oldest is None:
            return None
        return min(oldest.created_s + self.max_wait_s, self._last_submit_s + self.quiet_after_s)


# Policy name -> class; `farm simulate` compares them.
POLICIES: dict[str, Callable[[], PlacementPolicy]] = {
    "farm": FarmPolicy,
    "round_robin": RoundRobinPolicy,
    "least_loaded": LeastLoadedPolicy,
    "pressure": PressurePolicy,
}
