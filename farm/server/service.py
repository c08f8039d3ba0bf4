"""The one door between the HTTP server and the farm.

The server validates what clients send and speaks ComfyUI's wire format; everything that
needs the queue, the workers or history goes through `FarmService`. The Ray-backed farm
implements it; the server never imports Ray, the scheduler or the workers.

Records here are the farm's own (typed, named fields); `farm.server.wire` turns them into
ComfyUI's positional tuples and nested dicts at the edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, AsyncIterator, Protocol

from farm.server.events import EventType, FarmEvent

if TYPE_CHECKING:  # the Ray service builds these; the server only passes them through
    from farm.prepare import PreparedPrompt


@dataclass(frozen=True)
class SubmitRequest:
    """A prompt that passed validation, ready to be queued. Built by POST /prompt and
    POST /batch; the service stores it durably before answering."""

    prepared: "PreparedPrompt"  # prompt_id, the API-format prompt, its parsed graph and plan
    outputs_to_execute: tuple[str, ...]  # output node ids that passed validation (ComfyUI runs only these)
    extra_data: dict  # ComfyUI's extra_data: client_id, extra_pnginfo, create_time (ms); secrets removed
    client_id: str | None  # websocket client that gets this prompt's events; None: every client (ComfyUI)
    number: float | None = None  # explicit priority from the client (lower runs first); None: next counter
    front: bool = False  # with number None: run ahead of everything queued (ComfyUI negates the counter)

    @property
    def prompt_id(self) -> str:
        return self.prepared.prompt_id

    @property
    def prompt(self) -> dict:
        return self.prepared.prompt


@dataclass(frozen=True)
class SubmitResult:
    prompt_id: str  # as given by the client, else minted by the server
    number: float  # the priority the prompt was queued with (int-valued unless the client sent one)


@dataclass(frozen=True)
class QueueItem:
    """One prompt in the queue. ComfyUI shows it as [number, prompt_id, prompt, extra_data,
    outputs_to_execute]."""

    number: float  # priority; lower runs first
    prompt_id: str
    prompt: dict  # the API-format workflow as submitted (after overrides)
    extra_data: dict  # as in SubmitRequest
    outputs_to_execute: tuple[str, ...]
    worker_id: str | None = None  # the GPU worker running it; None while pending


@dataclass(frozen=True)
class QueueSnapshot:
    running: list[QueueItem]  # started, not finished; one per busy worker (several per batch)
    pending: list[QueueItem]  # waiting, in the order they will start

    @property
    def remaining(self) -> int:
        """ComfyUI's exec_info.queue_remaining: running plus pending."""
        return len(self.running) + len(self.pending)


class HistoryStatus(str, Enum):
    SUCCESS = "success"
    ERROR = "error"  # a node raised, or the prompt was interrupted (ComfyUI records both so)


@dataclass(frozen=True)
class StatusMessage:
    """One entry of history's status.messages: ComfyUI keeps the lifecycle events of a
    prompt there, each data dict carrying a "timestamp" in milliseconds."""

    event: EventType  # execution_start, execution_cached, execution_success, execution_error, execution_interrupted
    data: dict  # the event's ComfyUI payload


@dataclass(frozen=True)
class JobTimings:
    """Wall-clock instants (unix seconds) of one prompt; None when it never got there."""

    submitted_at_s: float  # stored in the durable queue
    started_at_s: float | None = None  # its first node began on a worker
    finished_at_s: float | None = None  # outputs written (or the error recorded)

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.started_at_s is None else self.started_at_s - self.submitted_at_s

    @property
    def run_s(self) -> float | None:
        if self.started_at_s is None or self.finished_at_s is None:
            return None
        return self.finished_at_s - self.started_at_s


@dataclass(frozen=True)
class HistoryItem:
    """A finished prompt (success or error)."""

    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs_to_execute: tuple[str, ...]
    outputs: dict[str, dict]  # output node id -> its UI dict, e.g. {"images": [{filename, subfolder, type}]}
    status: HistoryStatus
    completed: bool  # True only when every requested output was produced
    messages: tuple[StatusMessage, ...]  # lifecycle events in the order they happened
    timings: JobTimings
    worker_id: str | None = None  # the worker that ran it (the last one, after a retry)
    attempts: int = 1  # how many workers tried it (a retry follows a dead worker)


@dataclass(frozen=True)
class ResidencyTiers:
    """Which checkpoints a worker holds where (names as in models/checkpoints)."""

    vram: tuple[str, ...] = ()  # loaded on the GPU: a job using one starts at once
    pinned_ram: tuple[str, ...] = ()  # in pinned host memory: back on the GPU in ~0.1 s
    disk: tuple[str, ...] = ()  # on the node's local disk


@dataclass(frozen=True)
class WorkerStatus:
    """One GPU worker as GET /workers shows it."""

    worker_id: str
    node: str  # host name or Ray node id of the machine
    gpu_index: int | None  # CUDA index on that machine; None for a CPU worker
    gpu_name: str
    alive: bool  # False between a death and its replacement
    tiers: ResidencyTiers = field(default_factory=ResidencyTiers)
    backlog: int = 0  # prompts assigned to it and not finished
    running: tuple[str, ...] = ()  # prompt ids in its current call (more than one when batched)
    utilization: float | None = None  # GPU busy fraction 0..1 over the last sampling window (NVML)
    vram_used_bytes: int | None = None
    vram_total_bytes: int | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """One device of the cluster, in the shape of ComfyUI's /system_stats "devices"."""

    name: str  # e.g. "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync"
    type: str  # torch device type: "cuda", "cpu", "mps"
    index: int | None  # torch device index on its node
    vram_total: int  # bytes
    vram_free: int  # bytes
    torch_vram_total: int = 0  # bytes reserved by torch's caching allocator
    torch_vram_free: int = 0  # of those, bytes not in use by tensors
    node: str | None = None  # the machine it sits in (ComfyUI has one machine, so no such key)
    worker_id: str | None = None  # the worker that owns it


class FarmService(Protocol):
    """What the HTTP server needs from the farm. Every method may be called concurrently
    from request handlers on the server's event loop; none may block the loop."""

    async def submit(self, req: SubmitRequest) -> SubmitResult:
        """Store the prompt durably, then acknowledge. Raises farm.errors.DuplicatePromptError
        when the prompt_id is already queued or in history."""

    async def queue_remaining(self) -> int:
        """Running plus pending, cheaply: asked on every websocket connect and GET /prompt."""

    async def queue(self) -> QueueSnapshot: ...

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        """Drop pending prompts; ids that are running, finished or unknown are ignored."""

    async def clear_queue(self) -> None:
        """Drop every pending prompt (running ones carry on, as in ComfyUI)."""

    async def history(self, max_items: int | None, offset: int) -> list[HistoryItem]:
        """Finished prompts, oldest first. offset >= 0: skip that many from the oldest;
        offset < 0: counts from the newest end (-n with max_items n: the newest n, ComfyUI's
        default); max_items None: all."""

    async def history_item(self, prompt_id: str) -> HistoryItem | None: ...

    async def delete_history(self, prompt_ids: list[str]) -> None: ...

    async def clear_history(self) -> None: ...

    async def interrupt(self, prompt_id: str | None) -> None:
        """Stop a running prompt; None stops every running prompt (ComfyUI has only one)."""

    async def free(self, unload_models: bool, free_memory: bool) -> None:
        """unload_models: drop weights from VRAM on every idle worker; free_memory: also
        drop cached node outputs."""

    async def cancel(self, prompt_id: str) -> bool:
        """Interrupt it if running, dequeue it if pending; True when either happened,
        False for a finished or unknown id (the jobs API's cancel is idempotent)."""

    async def workers(self) -> list[WorkerStatus]: ...

    async def devices(self) -> list[DeviceInfo]:
        """One entry per GPU of the cluster (CPU workers report their host RAM)."""

    def events(self) -> AsyncIterator[FarmEvent]:
        """Every event of every prompt plus queue status changes, in order, for as long as
        the server runs. The server fans them out; one slow client never slows this."""
