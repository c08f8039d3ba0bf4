"""What a node sees while it runs, and what the engine reports about a job."""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Protocol, Sequence

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
    # A retry: its output nodes (SaveImage) run again instead of coming from the node cache.
    # The last attempt may have failed because its files could not be written, and a cached
    # output node writes nothing.
    rerun_outputs: bool = False

    def emit(self, event_type: EventType, data: dict) -> None:
        """Tell whoever listens to this job (its websocket client, history, a future)."""
        self.events(FarmEvent(event_type, {**data, "prompt_id": self.prompt_id}, self.client_id))


class ModelProvider(Protocol):
    """Hands out loaded checkpoints by their name in models/checkpoints. The local engine
    keeps a small LRU; a farm worker serves them from its residency tiers."""

    def checkpoint(self, name: str): ...


class NodeState(str, Enum):
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class ProgressBoard:
    """One prompt's progress_state (ComfyUI's comfy_execution/progress.py): every node that
    started or was taken from the cache, with its value, max and state. Each message carries
    the whole board, so a client that missed one loses nothing."""

    nodes: dict[str, dict] = field(default_factory=dict)  # node id -> {"value", "max", "state"}

    def start(self, node_id: str) -> None:
        self.nodes[node_id] = {"value": 0.0, "max": 1.0, "state": NodeState.RUNNING}

    def update(self, node_id: str, value: float, total: float) -> None:
        self.nodes[node_id] = {"value": value, "max": total, "state": NodeState.RUNNING}

    def finish(self, node_id: str) -> None:
        entry = self.nodes.setdefault(node_id, {"value": 0.0, "max": 1.0, "state": NodeState.RUNNING})
        entry.update(value=entry["max"], state=NodeState.FINISHED)

    def payload(self, prompt_id: str) -> dict:
        """The progress_state body. A farm graph has no subgraph expansion, so a node is its
        own display, parent-less and real node."""
        return {"prompt_id": prompt_id, "nodes": {
            node_id: {"value": e["value"], "max": e["max"], "state": e["state"].value, "node_id": node_id,
                      "prompt_id": prompt_id, "display_node_id": node_id, "parent_node_id": None,
                      "real_node_id": node_id}
            for node_id, e in self.nodes.items()}}


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
    boards: tuple[ProgressBoard, ...] = ()  # one per job, when the engine keeps progress_state
    served: tuple[tuple[int, ...], ...] = ()  # per input of a batched call: the indices in `jobs`
    # it serves (identical nodes of several jobs are one input); empty: one input for all jobs

    @property
    def job(self) -> JobContext:
        assert len(self.jobs) == 1, "a batched call has no single job"
        return self.jobs[0]

    def check_interrupt(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted("interrupted by the user")

    def progress(self, value: int, total: int, inputs: "Sequence[int] | None" = None) -> None:
        """A sampler step finished: tell every job in the call, or the jobs of these inputs of
        a batched call (the board first, then the step, as ComfyUI's progress hook does),
        then honour an interrupt."""
        pairs = list(itertools.zip_longest(self.jobs, self.boards))
        if inputs is not None and self.served:
            pairs = [pairs[j] for k in inputs for j in self.served[k]]
        for job, board in pairs:
            if board is not None:
                board.update(self.node_id, value, total)
                job.emit(EventType.PROGRESS_STATE, board.payload(job.prompt_id))
            job.emit(EventType.PROGRESS, {"value": value, "max": total, "prompt_id": job.prompt_id,
                                          "node": self.node_id})
        self.check_interrupt()
