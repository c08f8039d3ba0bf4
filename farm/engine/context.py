"""What a node sees while it runs, and what the engine reports about a job."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from farm.errors import Interrupted
from farm.records.events import EventType, FarmEvent

# Where a job's events go; each payload is ComfyUI's websocket shape for its type.
EventSink = Callable[[FarmEvent], None]


def no_events(event: FarmEvent) -> None:
    pass


@dataclass(frozen=True)
class JobContext:
    """One submitted prompt, as the nodes need to know it."""

    prompt_id: str
    prompt: dict  # the API-format workflow; SaveImage writes it into the PNG
    extra_pnginfo: dict | None = None  # e.g. {"workflow": <UI graph>}
    client_id: str | None = None
    events: EventSink = no_events

    def emit(self, event_type: EventType, data: dict) -> None:
        """Tell whoever listens to this job (its websocket client, history, a future)."""
        self.events(FarmEvent(event_type, {**data, "prompt_id": self.prompt_id}, self.client_id))


class ModelProvider(Protocol):
    """Hands out loaded checkpoints by their name in models/checkpoints. The local engine
    keeps a small LRU; a farm worker serves them from its residency tiers."""

    def checkpoint(self, name: str): ...


@dataclass
class RunContext:
    """Passed to `Node.run`: where to put tensors, where models and images come from, and
    which jobs this call serves (more than one when the engine batches jobs)."""

    device: torch.device
    dtype: torch.dtype
    models: ModelProvider
    images: "object"  # farm.engine.images.ImageSink
    node_ctx: "object"  # farm.nodes.spec.NodeContext: folders and limits
    node_id: str
    jobs: tuple[JobContext, ...]
    interrupt: threading.Event = field(default_factory=threading.Event)

    @property
    def job(self) -> JobContext:
        assert len(self.jobs) == 1, "a batched call has no single job"
        return self.jobs[0]

    def check_interrupt(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted("interrupted by the user")

    def progress(self, value: int, total: int) -> None:
        """A sampler step finished: tell every job in the call, then honour an interrupt."""
        for job in self.jobs:
            job.emit(EventType.PROGRESS, {"value": value, "max": total, "prompt_id": job.prompt_id,
                                          "node": self.node_id})
        self.check_interrupt()
