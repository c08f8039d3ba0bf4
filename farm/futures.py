"""What the Python API hands back for a submitted prompt: a JobFuture that resolves to a
JobResult (or raises JobFailed), and the Progress its callbacks get. Ray-free: the Farm
(farm.client) resolves the futures from the dispatcher's answers."""
from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from farm.errors import FarmError
from farm.records.events import EventType
from farm.records.history import HistoryItem, HistoryStatus, JobTimings
from farm.records.images import ImageRef


class FutureOwner(Protocol):
    """What a JobFuture asks of the Farm that made it (farm.client.Farm)."""

    def cancel(self, prompt_id: str) -> bool: ...

    def _listen(self, future: "JobFuture") -> None: ...


@dataclass(frozen=True)
class JobResult:
    prompt_id: str
    status: HistoryStatus
    outputs: dict[str, dict]  # output node id -> ComfyUI ui dict ({"images": [...]})
    images: tuple[ImageRef, ...]  # the images written, as ComfyUI names them
    files: tuple[Path, ...]  # the same images as paths in the head's output folder
    timings: JobTimings  # submitted / started / finished (unix seconds)
    worker_id: str | None
    attempts: int
    error: str | None = None  # why it failed or was interrupted

    @property
    def ok(self) -> bool:
        return self.status is HistoryStatus.SUCCESS


class JobFailed(FarmError):
    """The job ran and failed (a node raised, out of memory, interrupted, or its workers
    kept dying); `result` holds the details."""

    def __init__(self, result: JobResult):
        self.result = result
        super().__init__(f"prompt {result.prompt_id} failed: {result.error}")


@dataclass(frozen=True)
class Progress:
    """A sampler step of one prompt (ComfyUI's progress event)."""

    prompt_id: str
    node: str | None
    value: int
    max: int


def error_of(item: HistoryItem) -> str | None:
    for message in reversed(item.messages):
        if message.event is EventType.EXECUTION_ERROR:
            text = message.data.get("exception_message") or "failed"
            node = message.data.get("node_id")
            if node and not text.startswith("node "):  # "": the farm failed it, no node to name  # say where, as history's consumers see it
                text = f"node {node} ({message.data.get('node_type')}): {text}"
            return text
        if message.event is EventType.EXECUTION_INTERRUPTED:
            return "interrupted"
    return None if item.status is HistoryStatus.SUCCESS else "failed"


class JobFuture:
    """A submitted prompt. `result()` blocks; `await future` works in asyncio code."""

    def __init__(self, farm: FutureOwner, prompt_id: str):
        self.farm = farm
        self.prompt_id = prompt_id
        self._future: Future[JobResult] = Future()
        self._progress: list[Callable[[Progress], None]] = []

    def result(self, timeout: float | None = None) -> JobResult:
        """The finished job; raises JobFailed if it failed, TimeoutError after `timeout` s."""
        result = self._future.result(timeout)
        if not result.ok:
            raise JobFailed(result)
        return result

    def outcome(self, timeout: float | None = None) -> JobResult:
        """Like result() but returns a failed job's result instead of raising."""
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        """Dequeue it, or interrupt it if it runs. False once it finished."""
        return self.farm.cancel(self.prompt_id)

    def add_done_callback(self, fn: Callable[["JobFuture"], None]) -> None:
        self._future.add_done_callback(lambda _f: fn(self))

    def on_progress(self, fn: Callable[[Progress], None]) -> None:
        self._progress.append(fn)
        self.farm._listen(self)

    def __await__(self):
        result = yield from asyncio.wrap_future(self._future).__await__()
        if not result.ok:
            raise JobFailed(result)
        return result

    def _resolve(self, result: JobResult) -> None:
        if not self._future.done():
            self._future.set_result(result)

    def _fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)
