"""Cross-job batching: queued jobs with equal batch_key run as one batched sampler call.

The batch_key is computed upstream (plans identical except for seed, prompt text, cfg, and
steps where the sampler takes one schedule per row: same checkpoint, size, sampler,
scheduler, and the same LoRA set: a LoRA's name and
strengths are constants the key covers), so equal keys are safe to stack. A
stream of batch-1 jobs then runs at batch-8 efficiency (DESIGN.md: 4.8x the images per
second for SD1.5 at batch 8).
"""
from __future__ import annotations

from dataclasses import dataclass

from farm.records.residency import LoraSet, Tier
from farm.scheduler.jobs import Job, batch_run_s
from farm.scheduler.queues import KeyedQueue


@dataclass(frozen=True)
class Batch:
    """Jobs that run as one call on one worker; what `DispatcherCore.worker_ready` returns."""
    batch_key: str  # the jobs' common group key
    checkpoint: str | None  # model the batch needs (None: no model)
    checkpoint_bytes: int  # its size, for the worker's residency budgets
    jobs: tuple[Job, ...]  # in priority order; the first is the one that was due
    expected_run_s: float  # GPU seconds expected once the model is resident
    worker_id: str = ""  # worker that runs it (set by the dispatcher)
    source_tier: Tier = Tier.GPU  # where the worker's checkpoint comes from, as last reported
    expected_load_s: float = 0.0  # seconds expected to bring the checkpoint to VRAM
    keep: frozenset[str] = frozenset()  # checkpoints the dispatcher wants this worker to
    # keep in VRAM: pass to Residency.load, which evicts them last
    loras: LoraSet = ()  # the jobs' common LoRA set

    @property
    def job_ids(self) -> tuple[str, ...]:
        return tuple(job.job_id for job in self.jobs)


def form_batch(queue: KeyedQueue, max_batch: int, batch_key: str | None = None) -> Batch | None:
    """Take up to max_batch jobs of one key from the queue, best priority first.

    The key is `batch_key`, or that of the queue's best job; jobs of other keys stay queued
    in their order. None when the queue (or that key) is empty. Equal keys mean equal LoRA
    sets; a job whose set differs all the same (a key made upstream without LoRAs in it)
    ends the batch rather than be sampled with another job's weights.
    """
    first = queue.head(batch_key)
    if first is None:
        return None
    key = first.group_key
    jobs: list[Job] = []
    while len(jobs) < max_batch:
        job = queue.head(key)
        if job is None or job.loras != first.loras:
            break
        queue.remove(job.job_id)
        jobs.append(job)
    # jobs of one key may differ in steps (farm.sampling.row_schedules): the batch runs as
    # long as its longest job
    longest = max(jobs, key=lambda job: job.est_run_s)
    return Batch(batch_key=key, checkpoint=first.checkpoint, checkpoint_bytes=first.checkpoint_bytes,
                 jobs=tuple(jobs), loras=first.loras,
                 expected_run_s=batch_run_s(longest.est_run_s, longest.est_extra_s, len(jobs)))
