"""The queue as the farm shows it: prompts waiting and running, and the answer to a submit."""
from __future__ import annotations

from dataclasses import dataclass


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
