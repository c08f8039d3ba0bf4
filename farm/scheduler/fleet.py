"""The dispatcher's view of its workers and queues, with the indexes placement reads.

Policies only read a Fleet; the DispatcherCore changes it. Every question a policy asks
on an event ("who holds this checkpoint in VRAM", "which idle worker has waited longest",
"which worker has the fewest jobs") is answered from an index, never by scanning all
workers or all jobs: the farm must place a million jobs on a thousand workers.
"""
from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Collection, Iterator

from farm.errors import UnknownJobError
from farm.records.residency import LoadCostModel, LoraSet, ResidencyReport, Tier
from farm.scheduler.batching import Batch, form_batch
from farm.scheduler.costs import (
    DEFAULT_FETCH_BYTES_PER_S,
    LORA_SWITCH_S,
    fetch_s,
    lora_switch_s,
)
from farm.scheduler.jobs import Job
from farm.scheduler.queues import KeyedQueue


@dataclass
class WorkerView:
    """One worker as the dispatcher sees it."""
    worker_id: str
    queue: KeyedQueue  # jobs reserved for this worker (push policies); empty for the farm's
    residency: ResidencyReport = field(default_factory=ResidencyReport)  # last report, plus
    # the checkpoint of the batch it was given since (it loads that before anything else)
    running: tuple[str, ...] = ()  # job ids of the batch it runs now
    busy_until_s: float = 0.0  # when that batch is expected to end
    last_used_s: float = float("-inf")  # when it last got a batch (least recently used order)
    idle: bool = False  # asked for work and got none: wake it when work arrives

    @property
    def gpu(self) -> frozenset[str]:
        return self.residency.gpu

    def backlog_s(self, now_s: float) -> float:
        """Expected seconds before this worker could start something queued behind its own
        queue: the rest of its running batch plus its queue's batched drain time."""
        return max(0.0, self.busy_until_s - now_s) + self.queue.total_work_s


class Fleet:
    def __init__(self, max_batch: int, costs: LoadCostModel, lora_s: float = LORA_SWITCH_S,
                 fetch_bytes_per_s: float = DEFAULT_FETCH_BYTES_PER_S):
        self.max_batch = max_batch  # batch limit
        self.costs = costs  # load-time estimates per tier (shared with the workers' reports)
        self.lora_s = lora_s  # seconds per LoRA patched in or out (costs.lora_switch_s)
        self.fetch_bytes_per_s = fetch_bytes_per_s  # from the model source, for a file a node lacks
        self.workers: dict[str, WorkerView] = {}  # worker_id -> view, in registration order
        self.pool = KeyedQueue(max_batch)  # jobs not reserved for any worker
        self._owner: dict[str, str | None] = {}  # queued job_id -> worker_id, or None (pool)
        self._holders: dict[str, dict[str, None]] = defaultdict(dict)  # checkpoint -> workers
        # holding it in VRAM (ordered sets: iteration order must not depend on string hashing)
        self._idle: dict[str, None] = {}  # idle workers, longest idle first (an ordered set)
        self._idle_holders: dict[str, dict[str, None]] = defaultdict(dict)  # checkpoint -> idle holders
        self._load_heap: list[tuple[int, int, int, str]] = []  # (jobs, rank, version, worker_id)
        self._load_version: dict[str, int] = {}  # worker_id -> version of its live heap entry
        self._rank: dict[str, int] = {}  # worker_id -> registration number (ties go to the first)
        self.order: list[str] = []  # worker ids in registration order (round robin)

    # --- workers ------------------------------------------------------------------------

    def add_worker(self, worker_id: str) -> WorkerView:
        view = self.workers.get(worker_id)
        if view is None:
            view = self.workers[worker_id] = WorkerView(worker_id, KeyedQueue(self.max_batch))
            self.order.append(worker_id)
            self._rank[worker_id] = len(self._rank)
            self._note_load(view)
        return view

    def worker(self, worker_id: str) -> WorkerView:
        view = self.workers.get(worker_id)
        if view is None:
            raise UnknownJobError(f"worker {worker_id!r} is not registered with the dispatcher")
        return view

    def remove_worker(self, worker_id: str) -> WorkerView:
        view = self.worker(worker_id)
        self.set_idle(view, False)
        self.set_residency(view, ResidencyReport())
        del self.workers[worker_id]
        self.order.remove(worker_id)
        self._load_version.pop(worker_id, None)
        return view

    def set_residency(self, view: WorkerView, report: ResidencyReport) -> None:
        for checkpoint in view.gpu - report.gpu:
            self._holders[checkpoint].pop(view.worker_id, None)
            self._idle_holders[checkpoint].pop(view.worker_id, None)
        for checkpoint in report.gpu - view.gpu:
            self._holders[checkpoint][view.worker_id] = None
            if view.idle:
                self._idle_holders[checkpoint][view.worker_id] = None
        view.residency = report

    def set_idle(self, view: WorkerView, idle: bool) -> None:
        if view.idle == idle:
            return
        view.idle = idle
        if idle:
            self._idle[view.worker_id] = None
            for checkpoint in view.gpu:
                self._idle_holders[checkpoint][view.worker_id] = None
        else:
            del self._idle[view.worker_id]
            for checkpoint in view.gpu:
                self._idle_holders[checkpoint].pop(view.worker_id, None)

    def set_running(self, view: WorkerView, running: tuple[str, ...], busy_until_s: float) -> None:
        view.running, view.busy_until_s = running, busy_until_s
        self._note_load(view)

    # --- questions policies ask ---------------------------------------------------------------

    def holders(self, checkpoint: str | None) -> Collection[str]:
        """Workers holding `checkpoint` in VRAM (as last reported or just dispatched); every
        worker for a job that needs no model."""
        if checkpoint is None:
            return self.workers.keys()
        return self._holders.get(checkpoint, ())

    def holder_count(self, checkpoint: str | None) -> int:
        return len(self.holders(checkpoint))

    def idle_workers(self) -> Iterator[WorkerView]:
        """Idle workers, the one idle longest first."""
        return (self.workers[w] for w in self._idle)

    def idle_holder(self, checkpoint: str | None, loras: LoraSet | None = None,
                    look: int = 16) -> WorkerView | None:
        """An idle worker that has the checkpoint in VRAM (or any idle one for no model);
        given `loras`, one of the `look` longest idle that applied that LoRA set to it
        last, if there is one (it switches no LoRA)."""
        pool = self._idle if checkpoint is None else self._idle_holders.get(checkpoint, {})
        if not pool:
            return None
        if loras is not None and checkpoint is not None:
            for worker_id in itertools.islice(pool, look):
                if self.workers[worker_id].residency.applied_loras(checkpoint) == loras:
                    return self.workers[worker_id]
        return self.workers[next(iter(pool))]

    def switch_s(self, view: WorkerView, checkpoint: str | None, size_bytes: int,
                 loras: LoraSet | None = None) -> float:
        """Expected seconds for this worker to bring the checkpoint into VRAM, plus, given
        the job's `loras`, to switch from the LoRA set it applied last (small next to a load)."""
        if checkpoint is None:
            return 0.0
        load_s = self.costs.estimate_s(view.residency.source(checkpoint), size_bytes)
        if view.residency.needs_fetch(checkpoint):  # on no tier, not even this node's disk
            load_s += fetch_s(size_bytes, self.fetch_bytes_per_s)
        if loras is None:
            return load_s
        return load_s + lora_switch_s(view.residency.applied_loras(checkpoint), loras, self.lora_s)

    def source(self, view: WorkerView, checkpoint: str | None) -> Tier:
        return Tier.GPU if checkpoint is None else view.residency.source(checkpoint)

    def least_loaded(self) -> WorkerView:
        """The worker with the fewest queued plus running jobs (ties: registered first)."""
        heap = self._load_heap
        while heap:
            _, _, version, worker_id = heap[0]
            if self._load_version.get(worker_id) == version:
                return self.workers[worker_id]
            heapq.heappop(heap)
        raise UnknownJobError("no workers are registered with the dispatcher")

    def _note_load(self, view: WorkerView) -> None:
        version = self._load_version.get(view.worker_id, 0) + 1
        self._load_version[view.worker_id] = version
        entry = (len(view.queue) + len(view.running), self._rank[view.worker_id], version, view.worker_id)
        heapq.heappush(self._load_heap, entry)
        if len(self._load_heap) > 4 * len(self.workers) + 64:
            self._load_heap = [e for e in self._load_heap if self._load_version.get(e[3]) == e[2]]
            heapq.heapify(self._load_heap)

    # --- queues -------------------------------------------------------------------------

    def queue_of(self, owner: str | None) -> KeyedQueue:
        return self.pool if owner is None else self.worker(owner).queue

    def enqueue(self, job: Job, owner: str | None) -> None:
        self.queue_of(owner).add(job)
        self._owner[job.job_id] = owner
        if owner is not None:
            self._note_load(self.workers[owner])

    def dequeue(self, job_id: str) -> Job | None:
        """Take a queued job out of whichever queue holds it (None: not queued)."""
        if job_id not in self._owner:
            return None
        owner = self._owner.pop(job_id)
        job = self.queue_of(owner).remove(job_id)
        if owner is not None:
            self._note_load(self.workers[owner])
        return job

    def take_batch(self, owner: str | None, batch_key: str | None, limit: int | None = None) -> Batch | None:
        """Up to `limit` (at most max_batch) jobs of one key, as a batch."""
        batch = form_batch(self.queue_of(owner), min(limit or self.max_batch, self.max_batch), batch_key)
        if batch is not None:
            for job in batch.jobs:
                del self._owner[job.job_id]
        return batch

    def owner_of(self, job_id: str) -> str | None:
        return self._owner.get(job_id)

    def queued(self) -> Iterator[Job]:
        yield from self.pool.jobs()
        for view in self.workers.values():
            yield from view.queue.jobs()
