"""One GPU worker without Ray: the engine on one device, its node-output cache, its model
residency, and the bookkeeping a farm needs back from a batch (outputs, lifecycle
messages for history, image files to wait for, timings).

actors/gpu_worker.py wraps this in a Ray actor; tests build it directly.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import torch

from farm.engine import Engine, JobContext, JobOutcome, PlannedJob
from farm.errors import Interrupted, NodeExecutionError
from farm.local import FarmPaths
from farm.models.store import ModelFolders
from farm.models.tiers import TierConfig, TieredModelProvider, TierMove, derive_budgets, host_memory
from farm.scheduler.residency import Residency, ResidencyReport
from farm.nodes.registry import default_registry
from farm.outputs import ImageBatch, ImageRef
from farm.prepare import prepare
from farm.server.events import EventType, FarmEvent

# Lifecycle events that history keeps under status.messages (ComfyUI's set).
HISTORY_EVENTS = frozenset({EventType.EXECUTION_START, EventType.EXECUTION_CACHED, EventType.EXECUTION_SUCCESS,
                            EventType.EXECUTION_ERROR, EventType.EXECUTION_INTERRUPTED})


@dataclass(frozen=True)
class WorkItem:
    """One queued prompt as a worker receives it. The worker plans it again (cheap, and it
    checks the files exist on this node) rather than trusting a plan made elsewhere."""

    prompt_id: str
    prompt: dict  # API format, overrides applied
    outputs_to_execute: tuple[str, ...]  # output node ids that passed validation; () = all
    client_id: str | None  # who hears its events; None: everyone
    extra_pnginfo: dict | None = None  # e.g. {"workflow": <UI graph>}, written into the PNGs


class FailureKind(str, Enum):
    NODE = "node"  # a node raised: the prompt's own fault, not retried
    INTERRUPTED = "interrupted"
    OUT_OF_MEMORY = "out_of_memory"  # the device ran out; the worker freed memory and goes on
    INVALID = "invalid"  # it did not plan on this node (a checkpoint missing here)


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
    images: list[ImageRef] = field(default_factory=list)  # files handed to the writer, to wait for
    started_at_s: float | None = None  # unix seconds
    finished_at_s: float | None = None
    batch_size: int = 1  # how many prompts ran in the same engine call

    @property
    def ok(self) -> bool:
        return self.failure is None


class RemoteImageSink:
    """The engine's image sink on a farm worker: `save` hands the pixels to a writer (on the
    head, through `send`) and returns the names at once; encoding happens there. `flush`
    does not wait: the dispatcher waits for a batch's files before it reports the jobs
    done, so the thread that feeds the GPU is free for the next batch meanwhile."""

    def __init__(self, send: Callable[[ImageBatch], list[ImageRef]]):
        self._send = send
        self._saved: list[ImageRef] = []
        self._lock = threading.Lock()

    def save(self, batch: ImageBatch) -> list[ImageRef]:
        refs = list(self._send(batch))
        with self._lock:
            self._saved.extend(refs)
        return refs

    def flush(self) -> None:
        pass

    def take(self) -> list[ImageRef]:
        with self._lock:
            refs, self._saved = self._saved, []
        return refs


class EventForwarder:
    """Collects a worker's events and sends them in small batches from its own thread, so
    a sampler step never waits for the network."""

    def __init__(self, send: Callable[[list[FarmEvent]], None], interval_s: float = 0.05):
        self._send = send
        self.interval_s = interval_s
        self._buffer: list[FarmEvent] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="events", daemon=True)
        self._thread.start()

    def emit(self, event: FarmEvent) -> None:
        with self._cond:
            self._buffer.append(event)
            self._cond.notify()

    def flush(self) -> None:
        """Send what is buffered now (from the calling thread), so that a job's events
        precede the report that it finished."""
        with self._cond:
            events, self._buffer = self._buffer, []
        if events:
            self._send(events)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(self.interval_s)  # gather a step's worth of progress from every job
            try:
                self.flush()
            except Exception:  # the hub restarting must not kill the worker; events are best effort
                pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.flush()


def is_out_of_memory(error: BaseException | None) -> bool:
    cause = error.cause if isinstance(error, NodeExecutionError) else error
    return isinstance(cause, torch.cuda.OutOfMemoryError) or (
        isinstance(cause, RuntimeError) and "out of memory" in str(cause).lower())


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


@dataclass
class BatchResult:
    """A finished engine call: one report per prompt, what the worker holds now, and the
    model loads it measured (the dispatcher's load-cost model learns from them)."""

    reports: list[JobReport]
    residency: ResidencyReport
    loads: list[TierMove]


class WorkerCore:
    """The engine, its cache and its models on one device."""

    def __init__(self, worker_id: str, paths: FarmPaths, device: torch.device, dtype: torch.dtype,
                 images: RemoteImageSink, events: EventForwarder, tiers: TierConfig = TierConfig(),
                 node: str = "", workers_on_host: int = 1):
        self.worker_id = worker_id
        self.node = node
        self.paths = paths
        self.registry = default_registry()
        self.node_ctx = paths.node_context()
        self.images = images
        self.events = events
        budgets = derive_budgets(tiers, device, workers_on_host)
        residency = Residency(budgets.vram_bytes, budgets.pinned_bytes, budgets.disk_bytes)
        self.models = TieredModelProvider(ModelFolders(paths.models), device, dtype, residency,
                                          local_dir=tiers.local_dir)
        self._loads_seen = 0
        self.engine = Engine(self.registry, self.node_ctx, self.models, images, device, dtype)
        # a checkpoint that left memory must not stay reachable through cached node outputs
        self.models.on_drop.append(lambda _name: self.engine.cache.clear())
        self.device, self.dtype = device, dtype
        self._running: tuple[str, ...] = ()
        self._targets: set[str] | None = None  # prompt ids an interrupt asked for; None: all
        self._run_lock = threading.Lock()  # one engine call at a time
        self._state_lock = threading.Lock()

    # -- running ---------------------------------------------------------------------------

    def run_batch(self, items: list[WorkItem]) -> BatchResult:
        """Run prompts that the dispatcher grouped (one engine call when their plans have
        the same shape). Never raises for a prompt's own fault: each gets a report."""
        with self._run_lock:
            reports = {item.prompt_id: JobReport(item.prompt_id, self.worker_id, batch_size=len(items))
                       for item in items}
            planned = [p for p in (self._plan(item, reports[item.prompt_id]) for item in items) if p is not None]
            self._run_planned(planned, reports)
            self.events.flush()
            loads = self.models.moves[self._loads_seen:]
            self._loads_seen = len(self.models.moves)
            return BatchResult([reports[item.prompt_id] for item in items], self.models.report(), loads)

    def _run_planned(self, planned: list[PlannedJob], reports: dict[str, JobReport]) -> None:
        while planned:
            ids = tuple(p.context.prompt_id for p in planned)
            with self._state_lock:
                self._running, self._targets = ids, set()
            try:
                outcomes = self._engine_call(planned)
            finally:
                with self._state_lock:
                    targets, self._running, self._targets = self._targets, (), set()
            retry: list[PlannedJob] = []
            oom = any(is_out_of_memory(o.error) for o in outcomes)
            if oom:
                self.free_after_oom()
            for job, outcome in zip(planned, outcomes):
                report = reports[outcome.prompt_id]
                if isinstance(outcome.error, Interrupted) and targets is not None and outcome.prompt_id not in targets:
                    retry.append(job)  # stopped only because it shared the call with the target
                elif oom and is_out_of_memory(outcome.error) and len(planned) > 1:
                    retry.append(job)  # a batch may not fit where one prompt does: try alone
                else:
                    report.images.extend(self._images_of(outcome))
                    self._finish(report, outcome)
                    continue
                report.messages.clear()  # history keeps the run that counts
            if oom and len(retry) > 1:
                for job in retry:
                    self._run_planned([job], reports)
                return
            planned = retry

    def _engine_call(self, planned: list[PlannedJob]) -> list[JobOutcome]:
        names = set().union(*(set(p.plan.checkpoints) for p in planned))
        try:
            self.models.keep(names)
        except Exception as exc:  # the checkpoint itself does not load: every job of the call fails
            failed = [JobOutcome(p.context.prompt_id, error=NodeExecutionError("", "CheckpointLoaderSimple", exc))
                      for p in planned]
            return failed
        try:
            return self.engine.run_batch(planned)
        finally:
            self.models.release()

    def _plan(self, item: WorkItem, report: JobReport) -> PlannedJob | None:
        context = JobContext(item.prompt_id, item.prompt, item.extra_pnginfo, item.client_id,
                             self._job_events(item, report))
        try:
            prepared = prepare(item.prompt, self.registry, self.node_ctx, prompt_id=item.prompt_id,
                               partial_execution_targets=list(item.outputs_to_execute) or None)
        except Exception as exc:  # validated before queueing; here only a node-local fault remains
            report.failure, report.error = FailureKind.INVALID, f"cannot run on worker {self.worker_id}: {exc}"
            report.finished_at_s = time.time()
            return None
        return PlannedJob(context, prepared.workflow, prepared.plan)

    def _job_events(self, item: WorkItem, report: JobReport):
        def events(event_type: str, data: dict) -> None:
            event = FarmEvent.from_engine(event_type, data, item.client_id)
            if event.type is EventType.EXECUTION_START and report.started_at_s is None:
                report.started_at_s = time.time()
            if event.type in HISTORY_EVENTS:
                report.messages.append(Message(event.type, {**data, "timestamp": int(time.time() * 1000)}))
            if event.type is EventType.EXECUTING and data.get("node") is None:
                return  # the end marker: the dispatcher sends it once history holds the prompt
            self.events.emit(event)
        return events

    def _images_of(self, outcome: JobOutcome) -> list[ImageRef]:
        refs = []
        for ui in outcome.outputs.values():
            for image in ui.get("images", []):
                refs.append(ImageRef(image["filename"], image["subfolder"], image["type"]))
        return refs

    def _finish(self, report: JobReport, outcome: JobOutcome) -> None:
        from farm.engine.executor import execution_error_payload

        report.outputs = outcome.outputs
        report.finished_at_s = time.time()
        error = outcome.error
        if error is None:
            return
        if isinstance(error, Interrupted):
            report.failure, report.error = FailureKind.INTERRUPTED, "interrupted by the user"
        elif is_out_of_memory(error):
            where = f"node {error.node_id} ({error.class_type})" if isinstance(error, NodeExecutionError) else "a node"
            report.failure = FailureKind.OUT_OF_MEMORY
            report.error = (f"out of memory on worker {self.worker_id} ({self.device}) in {where}: lower the "
                            f"resolution or batch_size, or run it on a GPU with more memory")
        else:
            report.failure, report.error = FailureKind.NODE, str(error)
        if isinstance(error, NodeExecutionError):
            report.error_event = execution_error_payload(error, outcome.executed_nodes)

    # -- control (any thread) --------------------------------------------------------------

    def interrupt(self, prompt_ids: set[str] | None = None) -> bool:
        """Stop the running call if it runs one of `prompt_ids` (None: whatever runs). Jobs
        of the same call that were not asked for run again right after."""
        with self._state_lock:
            if not self._running:
                return False
            if prompt_ids is not None:
                hit = set(prompt_ids) & set(self._running)
                if not hit:
                    return False
                self._targets = (self._targets or set()) | hit
            else:
                self._targets = None
            self.engine.interrupt.set()
            return True

    def free_after_oom(self) -> None:
        self.engine.cache.clear()
        self.models.unload()

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: waits for the running call (weights in use cannot move)."""
        with self._run_lock:
            if free_memory:
                self.engine.cache.clear()
            if unload_models:
                self.models.unload()

    def state(self) -> WorkerState:
        with self._state_lock:
            running = self._running
        used = total = free = None
        torch_total = torch_free = 0
        name = "cpu"
        index = None
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free
            torch_total = torch.cuda.memory_reserved(self.device)
            torch_free = torch_total - torch.cuda.memory_allocated(self.device)
            name = torch.cuda.get_device_name(self.device)
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        else:  # a CPU worker's device memory is the host's
            total, free = host_memory()
            used = total - free
        return WorkerState(self.worker_id, self.node, str(self.device), index, name, self.models.report(), running,
                           used, total, free, torch_total, torch_free)
