"""Runs planned workflows: one job, or several compatible jobs as one batch.

The plan fixes the order (ancestors of the requested outputs, topologically). For each
node the engine looks up the node's signature in the output cache; on a miss it runs the
node. When several jobs run together, jobs whose node has the same signature share one
run (the checkpoint, the negative prompt), and jobs whose signatures differ go to the
node's `run_batch` when it has one (KSampler: one batched sampler call), else one by one.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from farm.engine.cache import OutputCache
from farm.engine.context import JobContext, ModelProvider, RunContext
from farm.errors import Interrupted, NodeExecutionError
from farm.nodes.registry import NodeRegistry
from farm.nodes.spec import NodeResult
from farm.records import comfy_errors
from farm.records.events import EventType
from farm.records.images import ImageRef
from farm.workflow.graph import Link, Workflow
from farm.workflow.plan import Plan


@dataclass
class PlannedJob:
    """A validated job ready to run: its plan (made once, at submission) and who hears about it."""

    context: JobContext
    plan: Plan

    @property
    def workflow(self) -> Workflow:
        return self.plan.workflow  # normalized: constants of their declared types


@dataclass
class JobOutcome:
    prompt_id: str
    outputs: dict[str, dict] = field(default_factory=dict)  # output node id -> ui, e.g. {"images": [...]}
    cached_nodes: list[str] = field(default_factory=list)
    executed_nodes: list[str] = field(default_factory=list)
    images: list[ImageRef] = field(default_factory=list)  # files its output nodes handed to the sink
    error: Exception | None = None  # NodeExecutionError or Interrupted
    run_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _JobState:
    job: PlannedJob
    outcome: JobOutcome
    values: dict[str, tuple] = field(default_factory=dict)  # node id -> outputs


class Engine:
    """Runs plans on one device. Owns the node-output cache; models come from a provider."""

    def __init__(self, registry: NodeRegistry, node_ctx, models: ModelProvider, images,
                 device: torch.device, dtype: torch.dtype, cache: OutputCache | None = None):
        self.registry = registry
        self.node_ctx = node_ctx
        self.models = models
        self.images = images
        self.device, self.dtype = device, dtype
        self.cache = cache if cache is not None else OutputCache()
        self.interrupt = threading.Event()
        self.node_runs: dict[str, int] = {}  # class_type -> times run (not cached); for tests and metrics
        self.node_cache_hits = 0  # node outputs a job took from the cache (metrics)

    def run(self, job: PlannedJob) -> JobOutcome:
        return self.run_batch([job])[0]

    def run_batch(self, jobs: list[PlannedJob], interrupt: threading.Event | None = None) -> list[JobOutcome]:
        """Run jobs that share one plan shape (same node ids and order). Each job gets its
        own events and outcome; a failing node fails the jobs it was running for.

        `interrupt`: this call's stop flag, for a caller that runs several calls at once
        (a farm worker overlaps one batch's decoding with the next one's sampling); without
        it the engine's own flag, cleared here."""
        if len({tuple(j.plan.order) for j in jobs}) > 1:
            return [self.run_batch([j], interrupt)[0] for j in jobs]  # not one shape: no sharing to be had
        started = time.perf_counter()
        if interrupt is None:
            interrupt = self.interrupt
            interrupt.clear()
        states = [_JobState(j, JobOutcome(j.context.prompt_id)) for j in jobs]
        for state in states:
            self._emit(state, EventType.EXECUTION_START, {})
            cached = [n for n in state.job.plan.order if self.cache.get(state.job.plan.signatures[n]) is not None]
            state.outcome.cached_nodes = cached
            self._emit(state, EventType.EXECUTION_CACHED, {"nodes": cached})
        for node_id in jobs[0].plan.order:
            live = [s for s in states if s.outcome.error is None]
            if not live:
                break
            self._run_node(node_id, live, interrupt)
        self.images.flush()  # a job is finished only when its files are on disk
        elapsed = time.perf_counter() - started
        for state in states:
            state.outcome.run_s = elapsed
            self._finish(state)
        return [s.outcome for s in states]

    # -- one node, for every live job of the batch ---------------------------------------

    def _run_node(self, node_id: str, states: list[_JobState], interrupt: threading.Event) -> None:
        by_signature: dict[str, list[_JobState]] = {}
        for state in states:
            by_signature.setdefault(state.job.plan.signatures[node_id], []).append(state)
        missing: list[tuple[str, list[_JobState]]] = []
        for signature, group in by_signature.items():
            hit = self.cache.get(signature)
            if hit is not None:
                for state in group:
                    self._store(state, node_id, hit, cached=True)
            else:
                missing.append((signature, group))
        if not missing:
            return
        node_call = states[0].job.workflow.nodes[node_id]
        node_cls = self.registry.get(node_call.class_type)
        node = node_cls()
        groups = [group for _, group in missing]
        try:
            if interrupt.is_set():  # ComfyUI checks before every node
                raise Interrupted("interrupted by the user")
            for group in groups:
                for state in group:
                    self._emit(state, EventType.EXECUTING, {"node": node_id, "display_node": node_id})
            inputs = [self._inputs(group[0], node_id) for group in groups]
            if len(groups) > 1 and hasattr(node, "run_batch"):
                rc = self._context(node_id, [s for g in groups for s in g], interrupt)
                results = node.run_batch(rc, inputs)
            else:
                results = [node.run(self._context(node_id, group, interrupt), **kwargs)
                           for group, kwargs in zip(groups, inputs)]
        except Interrupted as exc:
            for state in states:
                state.outcome.error = exc
            return
        except Exception as exc:  # a node's own failure: report it, keep the worker alive
            error = NodeExecutionError(node_id, node_call.class_type, exc)
            for group in groups:
                for state in group:
                    state.outcome.error = error
            return
        self.node_runs[node_call.class_type] = self.node_runs.get(node_call.class_type, 0) + len(groups)
        for (signature, group), result in zip(missing, results):
            outputs = result if isinstance(result, (tuple, NodeResult)) else tuple(result)
            self.cache.put(signature, outputs)
            for state in group:
                self._store(state, node_id, outputs, cached=False)

    def _store(self, state: _JobState, node_id: str, outputs, cached: bool) -> None:
        if isinstance(outputs, NodeResult):
            state.values[node_id] = outputs.outputs
            if outputs.ui is not None:
                state.outcome.outputs[node_id] = outputs.ui
                if not cached:
                    state.outcome.images.extend(outputs.images)
                if not cached:
                    self._emit(state, EventType.EXECUTED, {"node": node_id, "display_node": node_id,
                                                   "output": outputs.ui})
        else:
            state.values[node_id] = outputs
        if cached:
            self.node_cache_hits += 1
        else:
            state.outcome.executed_nodes.append(node_id)

    def _inputs(self, state: _JobState, node_id: str) -> dict:
        call = state.job.workflow.nodes[node_id]
        return {name: state.values[v.node_id][v.output_index] if isinstance(v, Link) else v
                for name, v in call.inputs.items()}

    def _context(self, node_id: str, states: list[_JobState], interrupt: threading.Event) -> RunContext:
        return RunContext(self.device, self.dtype, self.models, self.images, self.node_ctx, node_id,
                          tuple(s.job.context for s in states), interrupt)

    # -- events --------------------------------------------------------------------------

    @staticmethod
    def _emit(state: _JobState, event_type: EventType, data: dict) -> None:
        state.job.context.emit(event_type, data)

    def _finish(self, state: _JobState) -> None:
        error = state.outcome.error
        if error is None:
            self._emit(state, EventType.EXECUTION_SUCCESS, {})
        elif isinstance(error, Interrupted):
            self._emit(state, EventType.EXECUTION_INTERRUPTED, {"node_id": None, "executed": state.outcome.executed_nodes})
        else:
            self._emit(state, EventType.EXECUTION_ERROR, execution_error_payload(error, state.outcome.executed_nodes))
        self._emit(state, EventType.EXECUTING, {"node": None, "display_node": None})


def execution_error_payload(error: NodeExecutionError, executed: list[str]) -> dict:
    """ComfyUI's execution_error body (farm.records.comfy_errors spells it)."""
    return comfy_errors.node_failure(error, executed)
