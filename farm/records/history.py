"""Finished prompts as history keeps them: status, lifecycle messages, timings."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from farm.records.events import EventType
from farm.records.images import ImageRef


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

    @property
    def images(self) -> tuple[ImageRef, ...]:
        """The files its output nodes wrote, typed."""
        return ImageRef.all_in(self.outputs)
