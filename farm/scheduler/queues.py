"""A queue of jobs grouped by batch key, with the running totals placement reads.

Every operation is O(log n) in the queue's length: policies ask for "the best job of this
key", "the oldest job", "the expected drain time of this checkpoint's jobs" on every event,
so nothing here scans the queue. Heaps use lazy deletion: a cancelled job's heap entry
stays until it surfaces and is skipped (the heaps are rebuilt when mostly stale).
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Iterable, Iterator

from farm.scheduler.jobs import Job, drain_s


class _LazyHeap:
    """A heap of (sort key, job_id) whose entries count only while the job is live."""

    def __init__(self) -> None:
        self.entries: list[tuple[tuple, str]] = []

    def push(self, key: tuple, job_id: str) -> None:
        heapq.heappush(self.entries, (key, job_id))

    def peek(self, live: dict[str, Job]) -> str | None:
        entries = self.entries
        while entries and entries[0][1] not in live:
            heapq.heappop(entries)
        return entries[0][1] if entries else None

    def compact(self, live: dict[str, Job], live_count: int) -> None:
        if len(self.entries) > 2 * live_count + 64:
            self.entries = [e for e in self.entries if e[1] in live]
            heapq.heapify(self.entries)


class KeyedQueue:
    """Queued jobs of one owner (the shared pool, or one worker's own queue)."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch  # batch limit used by the drain-time estimates
        self._jobs: dict[str, Job] = {}  # job_id -> Job, only live (queued here) jobs
        self._by_key: dict[str, _LazyHeap] = defaultdict(_LazyHeap)  # group key -> priority heap
        self._key_count: dict[str, int] = defaultdict(int)  # group key -> live jobs
        self._keys_of: dict[str | None, dict[str, None]] = defaultdict(dict)  # checkpoint -> group
        # keys (an ordered set: nothing may depend on string hashing)
        self._ckpt_count: dict[str | None, int] = defaultdict(int)  # checkpoint -> live jobs
        self._work_s: dict[str | None, float] = defaultdict(float)  # checkpoint -> drain seconds
        self._by_priority = _LazyHeap()  # all jobs, best priority first
        self._by_age = _LazyHeap()  # all jobs, oldest submission first
        self.total_work_s = 0.0  # sum of drain seconds over checkpoints

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def jobs(self) -> Iterator[Job]:
        return iter(self._jobs.values())

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    # --- changes --------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        assert job.job_id not in self._jobs, f"{job.job_id} is queued twice"
        key = job.group_key
        self._jobs[job.job_id] = job
        self._by_key[key].push(job.priority, job.job_id)
        self._by_priority.push(job.priority, job.job_id)
        self._by_age.push((job.created_s, job.seq), job.job_id)
        self._keys_of[job.checkpoint][key] = None
        self._ckpt_count[job.checkpoint] += 1
        self._recount(job, key, +1)

    def remove(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        key = job.group_key
        self._ckpt_count[job.checkpoint] -= 1
        self._recount(job, key, -1)
        if self._key_count[key] == 0:
            del self._key_count[key], self._by_key[key]
            self._keys_of[job.checkpoint].pop(key, None)
            if not self._keys_of[job.checkpoint]:
                del self._keys_of[job.checkpoint], self._ckpt_count[job.checkpoint]
                del self._work_s[job.checkpoint]
        else:
            self._by_key[key].compact(self._jobs, self._key_count[key])
        self._by_priority.compact(self._jobs, len(self._jobs))
        self._by_age.compact(self._jobs, len(self._jobs))
        return job

    def _recount(self, job: Job, key: str, delta: int) -> None:
        """Keep the checkpoint's drain estimate equal to the sum over its keys."""
        old = self._key_count[key]
        new = old + delta
        self._key_count[key] = new
        change = (drain_s(job.est_run_s, job.est_extra_s, new, self.max_batch)
                  - drain_s(job.est_run_s, job.est_extra_s, old, self.max_batch))
        self._work_s[job.checkpoint] += change
        self.total_work_s += change
        if not self._jobs:
            self.total_work_s = 0.0  # drop float drift whenever the queue empties

    # --- reads ----------------------------------------------------------------------------

    def head(self, key: str | None = None) -> Job | None:
        """The job that should run first (of one group key, or of the whole queue)."""
        heap = self._by_priority if key is None else self._by_key.get(key)
        job_id = heap.peek(self._jobs) if heap is not None else None
        return None if job_id is None else self._jobs[job_id]

    def oldest(self) -> Job | None:
        job_id = self._by_age.peek(self._jobs)
        return None if job_id is None else self._jobs[job_id]

    def keys_of(self, checkpoint: str | None) -> Iterable[str]:
        return self._keys_of.get(checkpoint, {}).keys()

    def checkpoints(self) -> Iterator[str | None]:
        """Checkpoints with queued jobs."""
        return iter(self._keys_of)

    def count_key(self, key: str) -> int:
        """Queued jobs of one group key."""
        return self._key_count.get(key, 0)

    def count_of(self, checkpoint: str | None) -> int:
        return self._ckpt_count.get(checkpoint, 0)

    def work_s(self, checkpoint: str | None) -> float:
        """Expected GPU seconds to run this checkpoint's queued jobs in full batches."""
        return self._work_s.get(checkpoint, 0.0)

    def best_head(self, checkpoints: Iterable[str | None]) -> Job | None:
        """The best-priority job among the keys of the given checkpoints."""
        best: Job | None = None
        for checkpoint in checkpoints:
            for key in self._keys_of.get(checkpoint, ()):
                job = self.head(key)
                if job is not None and (best is None or job.priority < best.priority):
                    best = job
        return best

