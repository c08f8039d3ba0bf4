"""One GPU worker without Ray: the engine on one device, its node-output cache, its model
residency, and the bookkeeping a farm needs back from a batch (outputs, lifecycle
messages for history, image files to wait for, timings).

actors/gpu_worker.py wraps this in a Ray actor; tests build it directly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from farm.engine import Engine, JobContext, JobOutcome, PlannedJob
from farm.errors import (
    FarmError,
    Interrupted,
    NodeExecutionError,
    WorkflowFormatError,
    one_line,
)
from farm.models.compiled import CompileConfig, UNetCompiler
from farm.models.store import ModelFolders
from farm.models.tiers import (
    TierConfig,
    TieredModelProvider,
    derive_budgets,
    host_memory,
)
from farm.nodes.latent import DECODE_PIXELS_PER_CALL
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.records.events import EventType, FarmEvent
from farm.records.images import ImageRef
from farm.records.metrics import GpuSample, WorkerCounters
from farm.records.paths import FarmPaths
from farm.records.residency import LoraSet, Residency, ResidencyReport
from farm.sampling.stage import sampling_windows
from farm.scheduler.messages import (
    HISTORY_EVENTS,
    BatchResult,
    FailureKind,
    JobReport,
    Message,
    WorkerState,
    WorkItem,
)
from farm.settings import Limits
from farm.worker.channels import EventForwarder, RemoteImageSink
from farm.worker.counters import gpu_monitor, worker_counters
from farm.worker.gc_pauses import process_gc_pauses
from farm.worker.nvml import gpu_identity
from farm.workflow.plan import CHECKPOINT_INPUT

log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException | None) -> bool:
    cause = error.cause if isinstance(error, NodeExecutionError) else error
    return isinstance(cause, torch.cuda.OutOfMemoryError) or (
        isinstance(cause, RuntimeError) and "out of memory" in str(cause).lower())


EARLY_STOP_S = 60.0  # how long an interrupt waits for a prompt dispatched here that has not begun


@dataclass(eq=False)
class _Call:
    """One engine call in flight, and what an interrupt asked of it."""

    prompt_ids: tuple[str, ...]
    stop: threading.Event = field(default_factory=threading.Event)  # the whole call stops
    targets: set[str] | None = field(default_factory=set)  # prompt ids asked to stop; None: all

    def ask_to_stop(self, prompt_ids: set[str] | None) -> None:
        """Named prompts leave the call at its next node while the others run on (stopping
        the call would throw away their progress); once none is left wanted, or with None,
        the whole call stops at once, mid-step. Under the worker's state lock."""
        if prompt_ids is None or self.targets is None:
            self.targets = None
        else:
            self.targets |= prompt_ids
        if self.targets is None or self.targets >= set(self.prompt_ids):
            self.stop.set()

    def is_stopped(self, prompt_id: str) -> bool:
        targets = self.targets
        return targets is None or prompt_id in targets


class WorkerCore:
    """The engine, its cache and its models on one device."""

    def __init__(self, worker_id: str, paths: FarmPaths, device: torch.device, dtype: torch.dtype,
                 images: RemoteImageSink, events: EventForwarder, tiers: TierConfig = TierConfig(),
                 node: str = "", workers_on_host: int = 1, compile: CompileConfig = CompileConfig(),
                 pipeline_depth: int = 1):
        self.worker_id = worker_id
        self.node = node
        self.gc_pauses = process_gc_pauses()  # a long collection idles the GPU: the bench lists them
        self.paths = paths
        self.registry = default_registry()
        # caps were checked at submission, on the head: a worker's own settings must not refuse a job
        self.node_ctx = NodeContext.for_paths(paths, Limits.uncapped())
        self.images = images
        self.events = events
        budgets = derive_budgets(tiers, device, workers_on_host)
        residency = Residency(budgets.vram_bytes, budgets.pinned_bytes, budgets.disk_bytes)
        self.models = TieredModelProvider(ModelFolders.for_paths(paths), device, dtype, residency,
                                          local_dir=tiers.local_dir)
        self.models.compiler = UNetCompiler(compile, device, paths.temp.parent / "state",
                                            set_aside=self.models.set_aside)
        self._loads_seen = 0
        self.engine = Engine(self.registry, self.node_ctx, self.models, images, device, dtype)
        # a checkpoint that left memory must not stay reachable through cached node outputs
        self.models.on_drop.append(lambda _name: self.engine.cache.clear())
        self.device, self.dtype = device, dtype
        # Engine calls at once: with 2, one batch samples (on the device's sampling thread)
        # while the other prepares its inputs or decodes and hands off its images.
        self.pipeline_depth = max(1, pipeline_depth)
        self._calls: dict[int, _Call] = {}  # running engine calls, by id
        # prompt id -> when an interrupt named it before its call began here: the dispatcher
        # interrupts a prompt once it is dispatched to this worker, which can be before
        # run_batch registers its call (Ray does not order the two calls)
        self._early_stops: dict[str, float] = {}
        self._gate = threading.Condition()  # admits up to pipeline_depth calls; free() waits for none
        self._active = 0
        self._freeing = False
        self._state_lock = threading.Lock()
        self.gpu_monitor = gpu_monitor(device)  # None on a CPU worker
        self._identity: tuple[str, str] | None = None  # NVML (name, UUID), read once
        self._applied: tuple[str | None, LoraSet] = (None, ())  # (checkpoint, LoRA set) of the last call
        # Compile the configured shapes before the first job (the dispatcher registers this
        # worker once it is built), so no job waits for the compiler; nothing with compile off.
        started = time.perf_counter()
        self.warm_shapes = self.models.compiler.warm(dtype, decode_pixels=DECODE_PIXELS_PER_CALL)
        self.warm_up_s = time.perf_counter() - started if self.warm_shapes else 0.0

    # -- running ---------------------------------------------------------------------------

    def run_batch(self, items: list[WorkItem]) -> BatchResult:
        """Run prompts that the dispatcher grouped (one engine call when their plans have
        the same shape). Never raises for a prompt's own fault: each gets a report."""
        with self._admitted():
            reports = {item.prompt_id: JobReport(item.prompt_id, self.worker_id, batch_size=len(items))
                       for item in items}
            planned = [p for p in (self._admit(item, reports[item.prompt_id]) for item in items) if p is not None]
            self._run_planned(planned, reports)
            self._attach_writes(reports.values())
            self.events.flush()
            with self._state_lock:
                loads = self.models.moves[self._loads_seen:]
                self._loads_seen = len(self.models.moves)
            return BatchResult([reports[item.prompt_id] for item in items], self.report(), loads)

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        with self._gate:
            while self._active >= self.pipeline_depth or self._freeing:
                self._gate.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._gate:
                self._active -= 1
                self._gate.notify_all()

    def _run_planned(self, planned: list[PlannedJob], reports: dict[str, JobReport]) -> None:
        while planned:
            call = _Call(tuple(p.context.prompt_id for p in planned))
            with self._state_lock:
                self._calls[id(call)] = call
                now = time.monotonic()
                asked = {i: self._early_stops.pop(i, None) for i in call.prompt_ids}
                early = {i for i, t in asked.items() if t is not None and now - t < EARLY_STOP_S}
                if early:
                    call.ask_to_stop(early)
            try:
                outcomes = self._engine_call(planned, call.stop, call.is_stopped)
            finally:
                with self._state_lock:
                    self._calls.pop(id(call), None)
                    targets = call.targets
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
                    report.images.extend(outcome.images)
                    self._finish(report, outcome)
                    continue
                report.messages.clear()  # history keeps the run that counts
            if oom and len(retry) > 1:
                for job in retry:
                    self._run_planned([job], reports)
                return
            planned = retry

    def _engine_call(self, planned: list[PlannedJob], stop: threading.Event,
                     stopped: Callable[[str], bool]) -> list[JobOutcome]:
        names = set().union(*(set(p.plan.checkpoints) for p in planned))
        try:
            self.models.keep(names)
        except Exception as exc:  # the checkpoint itself does not load: every job of the call fails
            self.models.release(names)
            return [_failed_before_running(p, NodeExecutionError(*_loader_node(p, names), exc)) for p in planned]
        try:
            return self.engine.run_batch(planned, stop, stopped)
        finally:
            self.models.release(names)
            last = planned[-1].plan
            with self._state_lock:
                self._applied = (last.checkpoints[0] if last.checkpoints else None, last.loras)

    def _admit(self, item: WorkItem, report: JobReport) -> PlannedJob | None:
        """The job as the engine runs it, from the plan made at submission. What can differ
        on this node is only whether the model files exist here (a file only the farm's model
        source holds is fetched now, in the batch's own time: placement counted it)."""
        context = JobContext(item.prompt_id, item.prompt, item.extra_pnginfo, item.client_id,
                             self._job_events(report), rerun_outputs=item.attempt > 1)
        try:
            if item.plan is None:
                raise WorkflowFormatError("the job was stored without a plan (by an older farm); submit it again")
            for name in item.plan.checkpoints:
                self.models.ensure_file(name)  # fetched from the model source when this node lacks it
            for folder, name in item.plan.model_files:  # ControlNets, LoRAs, VAEs
                self.models.folders.resolve(folder, name)
        except FarmError as exc:
            report.failure, report.error = FailureKind.INVALID, f"cannot run on worker {self.worker_id}: {one_line(exc)}"
            report.finished_at_s = time.time()
            return None
        return PlannedJob(context, item.plan)

    def _job_events(self, report: JobReport) -> Callable[[FarmEvent], None]:
        def events(event: FarmEvent) -> None:
            if event.type is EventType.EXECUTION_START and report.started_at_s is None:
                report.started_at_s = time.time()
            if event.type in HISTORY_EVENTS:
                report.messages.append(Message(event.type, {**event.data, "timestamp": int(time.time() * 1000)}))
            if event.type is EventType.EXECUTING and event.data.get("node") is None:
                return  # the end marker: the dispatcher sends it once history holds the prompt
            self.events.emit(event, after=self._writes_named_by(event))
        return events

    def _writes_named_by(self, event: FarmEvent) -> list[object]:
        """For `executed`: the writes of the images it names, which it waits for."""
        if event.type is not EventType.EXECUTED:
            return []
        images = (event.data.get("output") or {}).get("images") or []
        return self.images.handles_naming({ImageRef.from_ui(image) for image in images})

    def _attach_writes(self, reports) -> None:
        """Each report gets the writer's handles for its images (jobs that shared a node run
        share its files); writes from a run that was redone belong to no report."""
        reports = list(reports)
        pending = self.images.take({ref for report in reports for ref in report.images})
        for report in reports:
            mine = set(report.images)
            report.writes = [w.handle for w in pending if mine.intersection(w.refs)]

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
            # one line for history and the user; the traceback goes to the worker's log
            log.warning("prompt %s failed: %s", report.prompt_id, one_line(error, 2000), exc_info=error)
            report.failure, report.error = FailureKind.NODE, one_line(error)
        if isinstance(error, NodeExecutionError):
            report.error_event = outcome.error_event or execution_error_payload(error, outcome.executed_nodes)

    # -- control (any thread) --------------------------------------------------------------

    def interrupt(self, prompt_ids: set[str] | None = None) -> bool:
        """Stop `prompt_ids` (None: whatever runs). A named prompt leaves its call at the
        call's next node; the rest of the batch runs on (the call stops at once only when
        nothing of it is wanted any more). A named prompt that runs nowhere here yet is
        stopped when its call begins, if it begins within EARLY_STOP_S (it was dispatched
        here and is on its way); returns whether a running call was asked now."""
        stopped = False
        now = time.monotonic()
        with self._state_lock:
            found: set[str] = set()
            for call in self._calls.values():
                hit = None if prompt_ids is None else set(prompt_ids) & set(call.prompt_ids)
                if hit is not None and not hit:
                    continue
                found |= hit or set()
                call.ask_to_stop(hit)
                stopped = True
            self._early_stops = {i: t for i, t in self._early_stops.items() if now - t < EARLY_STOP_S}
            for prompt_id in set(prompt_ids or ()) - found:
                self._early_stops[prompt_id] = now
        return stopped

    def free_after_oom(self) -> None:
        self.engine.cache.clear()
        self.models.unload()

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: waits for the running calls (weights in use cannot move)."""
        with self._gate:
            self._freeing = True
            while self._active:
                self._gate.wait()
        try:
            if free_memory:
                self.engine.cache.clear()
            if unload_models:
                self.models.unload()
        finally:
            with self._gate:
                self._freeing = False
                self._gate.notify_all()

    def state(self) -> WorkerState:
        with self._state_lock:
            running = tuple(j for call in self._calls.values() for j in call.prompt_ids)
        used = total = free = None
        torch_total = torch_free = 0
        name = "cpu"
        index = uuid = None
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free
            torch_total = torch.cuda.memory_reserved(self.device)
            torch_free = torch_total - torch.cuda.memory_allocated(self.device)
            name = torch.cuda.get_device_name(self.device)
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            if self._identity is None:
                self._identity = gpu_identity(index) or ("", "")
            uuid = self._identity[1] or None
        else:  # a CPU worker's device memory is the host's
            total, free = host_memory()
            used = total - free
        return WorkerState(self.worker_id, self.node, str(self.device), index, name, self.report(), running,
                           used, total, free, torch_total, torch_free,
                           self.gpu_monitor.sample() if self.gpu_monitor else GpuSample(), self.counters(), uuid)

    def report(self) -> ResidencyReport:
        """What this worker holds, for the dispatcher: the residency tiers, the LoRA set its
        last engine call applied (LoRA files stay read and bound; the base weights are
        restored after every sampling loop, farm.models.lora), and the device memory free
        for activations (the batch sizer's budget; None on a CPU worker)."""
        with self._state_lock:
            checkpoint, loras = self._applied
        free = None
        if self.device.type == "cuda":
            device_free, _ = torch.cuda.mem_get_info(self.device)
            # memory torch holds but no tensor uses is free for the next batch too
            free = device_free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return dataclasses.replace(self.models.report(), lora_checkpoint=checkpoint, loras=loras, free_vram_bytes=free)

    def counters(self) -> WorkerCounters:
        return worker_counters(self.models, self.engine)

    def stats(self) -> dict:
        """For benchmarks: what compiling cost per checkpoint and shape, the warm-up at start
        (seconds in all and per warm shape), every model load, the garbage collector's pauses,
        and the last sampler loops' (start, end) in unix seconds."""
        return {"compile": self.models.compiler.report() if self.models.compiler else {},
                "loads": [{"checkpoint": m.name, "source": m.source.value, "bytes": m.nbytes,
                           "seconds": round(m.seconds, 3)} for m in self.models.moves],
                "pipeline_depth": self.pipeline_depth,
                "warm_up": {"seconds": round(self.warm_up_s, 3),
                            "shapes": {k: round(v, 3) for k, v in self.warm_shapes.items()},
                            "decoders": {k: round(v, 3) for k, v in self.models.compiler.warmed_decoders.items()}},
                "gc": self.gc_pauses.report(),
                "sampling_windows": [[round(a, 3), round(b, 3)] for a, b in sampling_windows(self.device)]}


def _failed_before_running(job: PlannedJob, error: NodeExecutionError) -> JobOutcome:
    """A job the engine never ran: its listeners get what the engine would have sent."""
    from farm.engine.executor import execution_error_payload

    stamp = {"timestamp": int(time.time() * 1000)}  # as ComfyUI stamps lifecycle messages
    job.context.emit(EventType.EXECUTION_START, stamp)
    job.context.emit(EventType.EXECUTION_ERROR, {**execution_error_payload(error, []), **stamp})
    return JobOutcome(job.context.prompt_id, error=error)


def _loader_node(job: PlannedJob, names: set[str]) -> tuple[str, str]:
    """(node id, class) of the job's first node that loads one of `names`: the node a failed
    checkpoint load is reported on, as ComfyUI reports it on the loader that raised."""
    for node_id in job.plan.order:
        call = job.plan.workflow.nodes[node_id]
        if call.inputs.get(CHECKPOINT_INPUT) in names:
            return node_id, call.class_type
    return "", "CheckpointLoaderSimple"
