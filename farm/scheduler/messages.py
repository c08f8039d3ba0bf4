"""What the dispatcher and a GPU worker say to each other: the work handed out, and the
reports that come back. Plain records; Ray only carries them."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from farm.models.tier_config import TierMove
from farm.records.events import EventType
from farm.records.images import ImageRef
from farm.records.metrics import GpuSample, WorkerCounters
from farm.records.residency import ResidencyReport
from farm.workflow.plan import Plan

# Lifecycle events that history keeps under status.messages (ComfyUI's set).
HISTORY_EVENTS = frozenset({EventType.EXECUTION_START, EventType.EXECUTION_CACHED, EventType.EXECUTION_SUCCESS,
                            EventType.EXECUTION_ERROR, EventType.EXECUTION_INTERRUPTED})


@dataclass(frozen=True)
class WorkItem:
    """One queued prompt as a worker receives it, with the plan it was validated with at
    submission. The worker runs that plan; it only checks that the model files the plan
    names exist on its node."""

    prompt_id: str
    prompt: dict  # API format, overrides applied: what SaveImage writes into the PNG
    plan: Plan | None  # None only for a job stored by a farm that kept no plans: it cannot run
    client_id: str | None  # who hears its events; None: everyone
    extra_pnginfo: dict | None = None  # e.g. {"workflow": <UI graph>}, written into the PNGs
    attempt: int = 1  # dispatches so far, this one included: a retry writes its images again


class FailureKind(str, Enum):
    NODE = "node"  # a node raised: the prompt's own fault, not retried
    INTERRUPTED = "interrupted"
    OUT_OF_MEMORY = "out_of_memory"  # the device ran out; the worker freed memory and goes on
    INVALID = "invalid"  # it cannot run on this node (a checkpoint missing here): retried elsewhere


@dataclass(frozen=True)
class Message:
    """A lifecycle event for history's status.messages; data carries "timestamp" (ms)."""

    event: EventType
    data: dict


@dataclass
class JobReport:
    """What a worker says about one prompt of a batch."""

    prompt_id: str
    worker_id: str
    outputs: dict[str, dict] = field(default_factory=dict)  # output node id -> ui dict
    failure: FailureKind | None = None
    error: str | None = None  # for the person who submitted it
    error_event: dict | None = None  # execution_error payload, when a node failed
    messages: list[Message] = field(default_factory=list)
    images: list[ImageRef] = field(default_factory=list)  # files handed to the writer
    writes: list[object] = field(default_factory=list)  # the writer's futures for them (Ray ObjectRefs), to await
    started_at_s: float | None = None  # unix seconds
    finished_at_s: float | None = None
    batch_size: int = 1  # how many prompts ran in the same engine call

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class WorkerState:
    """What a worker reports to the dispatcher: where it is and what it holds."""

    worker_id: str
    node: str
    device: str  # "cuda:0", "cpu"
    gpu_index: int | None
    gpu_name: str
    residency: ResidencyReport  # checkpoint names per tier
    running: tuple[str, ...]  # prompt ids in the current engine call
    vram_used_bytes: int | None
    vram_total_bytes: int | None
    vram_free_bytes: int | None
    torch_vram_total: int = 0
    torch_vram_free: int = 0
    gpu: GpuSample = field(default_factory=GpuSample)  # NVML's view (utilisation), or why there is none
    counters: WorkerCounters = field(default_factory=WorkerCounters)  # for GET /metrics
    gpu_uuid: str | None = None  # NVML's GPU-... id: tells apart GPUs that share a name (and workers sharing one)


@dataclass
class BatchResult:
    """A finished engine call: one report per prompt, what the worker holds now, and the
    model loads it measured (the dispatcher's load-cost model learns from them)."""

    reports: list[JobReport]
    residency: ResidencyReport
    loads: list[TierMove]
