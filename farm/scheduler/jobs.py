"""The job record: one ComfyUI prompt on its way through the farm's queue.

A job is identified by its ComfyUI prompt_id. It is made once, at submission, from the
validated prompt (`Job.from_prepared`) and carries that prompt's plan to the worker, which
runs it without planning again. Everything the scheduler needs to place it (checkpoint,
batch_key, run-time estimates) is read off the plan here; the scheduler never looks inside
the workflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Sequence

from farm.models.store import ModelFolders
from farm.records.residency import LoraSet, lora_set
from farm.workflow.plan import Plan
from farm.workflow.prepare import PreparedPrompt


class JobState(str, Enum):
    QUEUED = "queued"  # stored, waiting for a worker
    RUNNING = "running"  # claimed by a worker (attempts already counted)
    DONE = "done"  # finished; outputs recorded
    FAILED = "failed"  # gave up: error says why (bad input, or attempts used up)
    CANCELLED = "cancelled"  # cancelled while queued, or interrupted while running

    @property
    def finished(self) -> bool:
        """Terminal states: the job is in history and never runs again."""
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


# Sort key of a queued job: "front" jobs first, then ComfyUI's number (lower runs first),
# then submission order. Tuples compare field by field, so heaps can use them directly.
Priority = tuple[int, float, int]


@dataclass
class Job:
    job_id: str  # ComfyUI prompt_id; unique over queue and history
    number: float  # ComfyUI priority number: lower runs first
    workflow: dict[str, Any] = field(default_factory=dict)  # API-format graph as submitted
    outputs_to_execute: list[str] = field(default_factory=list)  # output node ids to run
    extra_data: dict[str, Any] = field(default_factory=dict)  # ComfyUI extra_data (extra_pnginfo, ...)
    client_id: str | None = None  # websocket client that gets this job's events
    front: bool = False  # queued ahead of every job without front
    checkpoint: str | None = None  # ckpt_name the plan loads; None: the job needs no model
    checkpoint_bytes: int = 0  # size of that checkpoint's weights (residency budgets, load cost)
    batch_key: str = ""  # jobs with equal non-empty keys may run as one batched call
    est_run_s: float = 1.0  # expected seconds on a warm GPU as a batch of one
    est_extra_s: float = 0.0  # expected seconds each further job adds to a batch of its key
    loras: LoraSet = ()  # LoRA set the plan applies to its checkpoint (placement prefers a worker
    # that applied the same; equal batch keys imply equal sets: names and strengths are constants)
    arch: str = ""  # checkpoint family ("sd15", "sdxl"); "": unknown (the batch sizer then caps at max_batch)
    width: int = 0  # largest image size the plan sets, in pixels; 0: unknown
    height: int = 0
    images: int = 1  # images per prompt (its batch_size)
    state: JobState = JobState.QUEUED
    attempts: int = 0  # dispatches so far (counted when a worker claims the job)
    worker_id: str | None = None  # worker running it, or the last one that did
    created_s: float = 0.0  # submission time (the dispatcher's clock)
    started_s: float | None = None  # last dispatch time
    finished_s: float | None = None  # time it entered history
    error: str | None = None  # why it failed or was cancelled
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node_id -> ComfyUI "ui" dict
    seq: int = 0  # submission order, assigned by the store; breaks priority ties
    plan: Plan | None = None  # what the worker runs, validated at submission; None only in simulated traces

    def __post_init__(self) -> None:
        self.loras = lora_set(self.loras)  # from the store's JSON, lists come back

    @classmethod
    def from_prepared(cls, prepared: PreparedPrompt, folders: ModelFolders | None = None, *, extra_data: dict | None = None,
                      client_id: str | None = None, number: float | None = None, front: bool = False,
                      outputs_to_execute: Sequence[str] | None = None) -> "Job":
        """The job for a prompt that passed validation. number None: the dispatcher gives the
        next one; outputs_to_execute None: the plan's outputs. create_time is stamped when
        the queue stores the job (DispatcherCore.submit), nowhere else."""
        from farm.models.load import checkpoint_family  # reads a header; its module imports torch

        plan = prepared.plan
        checkpoint = plan.checkpoints[0] if plan.checkpoints else None
        checkpoint_bytes = folders.size_bytes("checkpoints", checkpoint) if folders and checkpoint else 0
        arch = checkpoint_family(folders.resolve("checkpoints", checkpoint)) if folders and checkpoint else ""
        width, height = plan.image_size or (0, 0)
        return cls(job_id=prepared.prompt_id, number=number, workflow=prepared.prompt,
                   outputs_to_execute=list(outputs_to_execute if outputs_to_execute is not None else plan.outputs),
                   extra_data=dict(extra_data or {}), client_id=client_id, front=front,
                   checkpoint=checkpoint, checkpoint_bytes=checkpoint_bytes, batch_key=plan.batch_key, plan=plan,
                   loras=plan.loras, arch=arch, width=width, height=height, images=plan.images)

    @property
    def priority(self) -> Priority:
        return (0 if self.front else 1, self.number, self.seq)

    @property
    def group_key(self) -> str:
        """The key jobs are batched by; a job without a batch_key batches only with itself."""
        return self.batch_key or f"solo:{self.job_id}"


def batch_run_s(est_run_s: float, est_extra_s: float, size: int) -> float:
    """Expected seconds of one batched call of `size` jobs of one key (linear in the size:
    DESIGN.md's UNet step times fit b1..b8 within 12%)."""
    return est_run_s + (size - 1) * est_extra_s


def drain_s(est_run_s: float, est_extra_s: float, count: int, max_batch: int) -> float:
    """Expected seconds to run `count` queued jobs of one key in batches of at most max_batch."""
    if count <= 0:
        return 0.0
    batches = -(-count // max_batch)
    return batches * est_run_s + (count - batches) * est_extra_s
