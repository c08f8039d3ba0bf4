"""The one door between the HTTP server and the farm.

The server validates what clients send and speaks ComfyUI's wire format; everything that
needs the queue, the workers or history goes through `FarmService`. The Ray-backed farm
(actors.service.RayFarmService) implements it; the server never imports Ray, the
scheduler or the workers.

The records it answers with live in farm.records (typed, named fields);
`farm.server.wire` turns them into ComfyUI's positional tuples and nested dicts at the edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from farm.records.events import FarmEvent
from farm.records.history import HistoryItem
from farm.records.metrics import FarmMetrics
from farm.records.queue import QueueSnapshot, SubmitResult
from farm.records.workers import DeviceInfo, WorkerStatus
from farm.workflow.prepare import PreparedPrompt


@dataclass(frozen=True)
class SubmitRequest:
    """A prompt that passed validation, ready to be queued. Built by POST /prompt and
    POST /batch; the service stores it durably before answering."""

    prepared: PreparedPrompt  # prompt_id, the API-format prompt, its parsed graph and plan
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

    async def metrics(self) -> FarmMetrics:
        """Counters and gauges for GET /metrics (queue depth, jobs finished, latency, every
        worker's GPU and model traffic, the autoscaler request)."""

    def events(self) -> AsyncIterator[FarmEvent]:
        """Every event of every prompt plus queue status changes, in order, for as long as
        the server runs. The server fans them out; one slow client never slows this."""
