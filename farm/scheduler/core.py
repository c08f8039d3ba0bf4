"""DispatcherCore: the farm's queue and placement, as plain Python with an injected clock.

The Ray Dispatcher actor wraps this class one method to one method; every argument and
return value is a plain picklable dataclass. Who calls what:
  the server / client     submit, cancel, interrupt, delete_pending, clear_pending, snapshot
  a GpuWorker             worker_ready (idle: "give me my next batch", with what it holds),
                          complete / fail (per job), observe_load, is_interrupted (per step)
  the cluster supervisor  register_worker, requeue_worker (a worker or its node died)
  a timer (or the driver) tick, at due_s(): wakes an idle worker when a wait bound expires

Durability: a job is in the store before submit returns, and every state change is written
before the in-memory queues change, so a restart (`DispatcherCore(store, ...)` on the same
file) rebuilds the queues from the store.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable

from farm.errors import UnknownJobError
from farm.records.residency import LoadCostModel, ResidencyReport, Tier
from farm.scheduler.batch_size import LATENT_FACTOR, BatchSizer
from farm.scheduler.batching import Batch
from farm.scheduler.costs import DEFAULT_FETCH_BYTES_PER_S, LORA_SWITCH_S
from farm.scheduler.fleet import Fleet
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.placement import Placement, PlacementPolicy
from farm.scheduler.store import JobStore


@dataclass(frozen=True)
class CoreConfig:
    max_batch: int = 8  # most jobs in one batched call (an upper bound on the sizer's answer)
    max_attempts: int = 3  # dispatches before a job that keeps losing its worker fails
    lora_switch_s: float = LORA_SWITCH_S  # seconds per LoRA patched in or out (placement's cost)
    sizer: BatchSizer | None = None  # jobs per call by architecture, size and free memory;
    # None: BatchSizer's defaults under max_batch
    fetch_bytes_per_s: float = DEFAULT_FETCH_BYTES_PER_S  # model source bandwidth, for placement


@dataclass(frozen=True)
class QueueState:
    """The dispatcher's view of its queue (Jobs; GET /queue's records.queue.QueueSnapshot is built
    from it): what runs and what waits, each in the order ComfyUI lists them."""
    running: tuple[Job, ...]  # by start time
    pending: tuple[Job, ...]  # by priority


class DispatcherCore:
    def __init__(self, store: JobStore, policy: PlacementPolicy, clock: Callable[[], float],
                 config: CoreConfig = CoreConfig(), costs: LoadCostModel | None = None):
        self.store = store  # durable record; written before memory changes
        self.policy = policy  # placement decisions
        self.clock = clock  # seconds; injected so tests and the simulator control time
        self.config = config
        self.fleet = Fleet(config.max_batch, costs or LoadCostModel(), config.lora_switch_s,
                           config.fetch_bytes_per_s)  # workers and queues
        self.sizer = config.sizer or BatchSizer(max_batch=config.max_batch)
        self._jobs: dict[str, Job] = {}  # job_id -> Job, queued or running
        self._interrupted: set[str] = set()  # running job ids asked to stop
        for job in store.recover(config.max_attempts, clock()):
            self._jobs[job.job_id] = job
            self._place(job)

    # --- workers ------------------------------------------------------------------------

    def register_worker(self, worker_id: str, report: ResidencyReport = ResidencyReport()) -> None:
        view = self.fleet.add_worker(worker_id)
        self.fleet.set_residency(view, report)

    def worker_ready(self, worker_id: str, report: ResidencyReport, busy: tuple[str, ...] = (),
                     finishing: tuple[str, ...] = ()) -> Batch | None:
        """A worker is free and reports what it holds; returns its next batch, or None (it is
        then idle until a Placement or tick() says to wake it).

        `busy`: jobs the worker is still running. A worker asks early, while its batch
        runs, so that it holds the next one in reserve and the GPU never waits for the
        dispatcher; it is then not idle even when nothing is left for it. `finishing`: jobs
        it has returned whose files are still being written (complete or fail follows)."""
        now = self.clock()
        view = self.fleet.add_worker(worker_id)
        still = tuple(j for j in view.running if j in busy)
        lost = [j for j in self._running_on(view.running, worker_id) if j not in still and j not in finishing]
        if lost:  # it asks for more without reporting these: they were lost with its state
            self._requeue(lost, f"worker {worker_id} restarted while it ran")
        busy_until = view.busy_until_s if still else now
        self.fleet.set_running(view, still, busy_until)
        self.fleet.set_residency(view, report)
        pick = self.policy.pick(view, self.fleet, now)
        batch = None if pick is None else self.fleet.take_batch(pick.owner, pick.batch_key,
                                                                self._batch_limit(pick.owner, pick.batch_key, report))
        if batch is None:
            self.fleet.set_idle(view, not still)
            return None
        self.fleet.set_idle(view, False)
        self.store.claim(batch.job_ids, worker_id, now)
        for job in batch.jobs:
            job.state, job.worker_id, job.started_s = JobState.RUNNING, worker_id, now
            job.attempts += 1
        source = self.fleet.source(view, batch.checkpoint)
        load_s = self.fleet.switch_s(view, batch.checkpoint, batch.checkpoint_bytes)
        switch_s = self.fleet.switch_s(view, batch.checkpoint, batch.checkpoint_bytes, batch.loras)
        if batch.checkpoint is not None:
            # Until its next report, count the worker as holding what it is about to load,
            # with this batch's LoRA set applied.
            expected = report if source is Tier.GPU else report.after_load(batch.checkpoint, batch.checkpoint_bytes,
                                                                             pick.keep)
            self.fleet.set_residency(view, dataclasses.replace(expected, lora_checkpoint=batch.checkpoint,
                                                               loras=batch.loras))
        view.last_used_s = now
        self.fleet.set_running(view, still + batch.job_ids, max(now, busy_until) + switch_s + batch.expected_run_s)
        return dataclasses.replace(batch, worker_id=worker_id, source_tier=source,
                                   expected_load_s=load_s, keep=pick.keep)

    def observe_load(self, tier: Tier, size_bytes: int, seconds: float) -> None:
        """A worker measured a load: feeds the per-tier cost model placement uses."""
        self.fleet.costs.observe(tier, size_bytes, seconds)

    def requeue_worker(self, worker_id: str) -> list[str]:
        """The worker is gone: its running and reserved jobs are placed again (running ones
        count an attempt, and fail once attempts are used up). Returns those job ids."""
        view = self.fleet.worker(worker_id)
        running = self._running_on(view.running, worker_id)
        reserved = [job.job_id for job in list(view.queue.jobs())]
        for job_id in reserved:
            self.fleet.dequeue(job_id)
        self.fleet.remove_worker(worker_id)
        self._requeue(running, f"worker {worker_id} was lost")
        for job_id in reserved:
            self._place(self._jobs[job_id])
        return running + reserved

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, job: Job) -> Placement:
        """Store the job (durably), then queue it. Raises DuplicatePromptError for a reused id.
        The one place a job's creation time is set: created_s, and extra_data's create_time
        (ms) that ComfyUI's jobs API sorts by, from the same reading of the clock."""
        job.created_s = self.clock()
        job.extra_data["create_time"] = int(job.created_s * 1000)
        self.store.add(job)
        self._jobs[job.job_id] = job
        return self._place(job)

    def complete(self, job_id: str, outputs: dict[str, dict[str, Any]]) -> bool:
        """The job's outputs are ready. False when it had already finished (a late duplicate
        from a worker that was thought lost): history keeps the first completion."""
        if not self.store.complete(job_id, outputs, self.clock()):
            return False
        self.fleet.dequeue(job_id)  # requeued after its worker was thought lost, then it reported
        self._forget(job_id)
        return True

    def fail(self, job_id: str, error: str, retryable: bool = False) -> JobState:
        """The job raised. A retryable fault (the worker, not the input) places it again while
        attempts remain; an interrupted job ends cancelled. Returns its state after that (a
        late report about a job that already finished changes nothing)."""
        now = self.clock()
        job = self._jobs.get(job_id)
        if job is None:
            found = self.store.get(job_id)
            return found.state if found is not None else JobState.FAILED
        if job_id in self._interrupted:
            self.store.cancel(job_id, f"interrupted: {error}", now)
            final = JobState.CANCELLED
        elif retryable:
            if job.state is JobState.RUNNING:  # not when it was requeued already
                self._requeue([job_id], error)
            return job.state if job_id in self._jobs else JobState.FAILED
        else:
            self.store.fail(job_id, error, now)
            final = JobState.FAILED
        self.fleet.dequeue(job_id)
        self._forget(job_id)
        return final

    def cancel(self, job_id: str) -> bool:
        """A queued job leaves the queue with no history entry (ComfyUI's cancel of a pending
        job deletes it); a running one is interrupted (its worker then reports fail and it
        ends cancelled, in history). False when the job is not queued or running."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        if job.state is JobState.RUNNING:
            self._interrupted.add(job_id)
            return True
        return self.delete_pending([job_id]) == 1

    def interrupt(self, job_id: str | None = None) -> list[str]:
        """Flag running jobs to stop (all of them when no id is given, ComfyUI's bare
        POST /interrupt). Workers check is_interrupted at every sampler step."""
        running = [j.job_id for j in self._jobs.values() if j.state is JobState.RUNNING]
        chosen = running if job_id is None else [j for j in running if j == job_id]
        self._interrupted.update(chosen)
        return chosen

    def is_interrupted(self, job_id: str) -> bool:
        return job_id in self._interrupted

    def delete_pending(self, job_ids: list[str]) -> int:
        """Drop queued jobs without a history entry (POST /queue {"delete": [...]})."""
        queued = [j for j in job_ids if j in self._jobs and self._jobs[j].state is JobState.QUEUED]
        count = self.store.delete_pending(queued)
        for job_id in queued:
            self.fleet.dequeue(job_id)
            self._forget(job_id)
        return count

    def clear_pending(self) -> int:
        return self.delete_pending([j.job_id for j in self.fleet.queued()])

    def job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id) or self.store.get(job_id)
        if job is None:
            raise UnknownJobError(f"no job {job_id}; it was never submitted or was deleted")
        return job

    def snapshot(self) -> QueueState:
        running = sorted((j for j in self._jobs.values() if j.state is JobState.RUNNING),
                         key=lambda j: (j.started_s or 0.0, j.seq))
        pending = sorted(self.fleet.queued(), key=lambda j: j.priority)
        return QueueState(tuple(running), tuple(pending))

    def due_s(self) -> float | None:
        """When tick() may next have a worker to wake (None: only new work wakes workers)."""
        return self.policy.due_s(self.fleet) if any(True for _ in self.fleet.idle_workers()) else None

    def tick(self, look: int = 16) -> list[str]:
        """Idle workers to wake now that a timer is due: of the `look` longest idle, those
        the policy would give a batch (each then calls worker_ready)."""
        now = self.clock()
        due = self.due_s()
        if due is None or due > now:
            return []
        woken = []
        for view in itertools.islice(self.fleet.idle_workers(), look):
            if self.policy.pick(view, self.fleet, now) is not None:
                woken.append(view.worker_id)
        return woken

    # --- internals ----------------------------------------------------------------------

    def _batch_limit(self, owner: str | None, batch_key: str, report: ResidencyReport) -> int:
        """Jobs of this key the worker should take at once: the sizer's answer for the key's
        shape and the memory the worker reports free, less weights it must load first."""
        head = self.fleet.queue_of(owner).head(batch_key)
        if head is None:
            return self.config.max_batch
        free = report.free_vram_bytes
        if free is not None and head.checkpoint is not None and head.checkpoint not in report.gpu:
            free -= head.checkpoint_bytes
        limit = self.sizer.limit(head.arch, head.width // LATENT_FACTOR, head.height // LATENT_FACTOR,
                                 head.images, free)
        return min(limit, self.config.max_batch)

    def _place(self, job: Job) -> Placement:
        placement = self.policy.choose(job, self.fleet, self.clock())
        self.fleet.enqueue(job, placement.worker_id if placement.reserved else None)
        wake = placement.worker_id is not None and self.fleet.workers[placement.worker_id].idle
        return dataclasses.replace(placement, wake=wake) if wake else placement

    def _running_on(self, job_ids: tuple[str, ...], worker_id: str) -> list[str]:
        """Those of job_ids that the dispatcher still counts as running on this worker."""
        return [j for j in job_ids if j in self._jobs and self._jobs[j].state is JobState.RUNNING
                and self._jobs[j].worker_id == worker_id]

    def _requeue(self, job_ids: list[str], reason: str) -> None:
        """Running jobs go back to the queue (or fail, attempts used up)."""
        now = self.clock()
        for job_id in job_ids:
            state = self.store.requeue(job_id, reason, self.config.max_attempts, now)
            job = self._jobs[job_id]
            if state is JobState.QUEUED:
                job.state, job.worker_id = JobState.QUEUED, None
                self._interrupted.discard(job_id)
                self._place(job)
            else:
                self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._interrupted.discard(job_id)
