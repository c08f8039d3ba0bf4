"""Runs planned workflows: one job, or several compatible jobs as one batch.

The plan fixes the order (ancestors of the requested outputs, topologically). For each
node the engine looks up the node's signature in the output cache; on a miss it runs the
node. When several jobs run together, jobs whose node has the same signature share one
run (the checkpoint, the negative prompt), and jobs whose signatures differ go to the
node's `run_batch` when it has one (KSampler: one batched sampler call), else one by one.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from farm.engine.cache import OutputCache
from farm.engine.context import JobContext, ModelProvider, ProgressBoard, RunContext
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
    error_event: dict | None = None  # execution_error's body for a NodeExecutionError
    interrupted_at: tuple[str, str] | None = None  # (node id, class type) an Interrupted stopped
    run_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _JobState:
    job: PlannedJob
    outcome: JobOutcome
    values: dict[str, tuple] = field(default_factory=dict)  # node id -> outputs
    board: ProgressBoard = field(default_factory=ProgressBoard)  # its progress_state


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

    def run_batch(self, jobs: list[PlannedJob], interrupt: threading.Event | None = None,
                  stopped: Callable[[str], bool] | None = None) -> list[JobOutcome]:
        """Run jobs that share one plan shape (same node ids and order). Each job gets its
        own events and outcome; a failing node fails the jobs it was running for.

        `interrupt`: this call's stop flag, for a caller that runs several calls at once
        (a farm worker overlaps one batch's decoding with the next one's sampling); without
        it the engine's own flag, cleared here. `stopped(prompt_id)`: asked before every
        node, a job it names ends there, interrupted, while the rest of the batch runs on."""
        if len({tuple(j.plan.order) for j in jobs}) > 1:  # not one shape: no sharing to be had
            return [self.run_batch([j], interrupt, stopped)[0] for j in jobs]
        started = time.perf_counter()
        if interrupt is None:
            interrupt = self.interrupt
            interrupt.clear()
        states = [_JobState(j, JobOutcome(j.context.prompt_id)) for j in jobs]
        for state in states:
            self._emit(state, EventType.EXECUTION_START, {})
            plan = state.job.plan
            hits = {n for n in plan.order
                    if not self._reruns(state.job, n) and self.cache.get(plan.signatures[n]) is not None}
            cached = [n for n in state.job.workflow.nodes if n in hits]  # in the prompt's order, as ComfyUI
            state.outcome.cached_nodes = cached
            self._emit(state, EventType.EXECUTION_CACHED, {"nodes": cached})
        for node_id in jobs[0].plan.order:
            if stopped is not None:
                self._stop_asked(states, node_id, stopped)
            live = [s for s in states if s.outcome.error is None]
            if not live:
                break
            self._run_node(node_id, live, interrupt)
        with torch.profiler.record_function("image writes"):
            self.images.flush()  # a job is finished only when its files are on disk
        elapsed = time.perf_counter() - started
        for state in states:
            state.outcome.run_s = elapsed
            self._finish(state)
        return [s.outcome for s in states]

    @staticmethod
    def _stop_asked(states: list[_JobState], node_id: str, stopped: Callable[[str], bool]) -> None:
        for state in states:
            if state.outcome.error is None and stopped(state.outcome.prompt_id):
                state.outcome.error = Interrupted("interrupted by the user")
                state.outcome.interrupted_at = (node_id, state.job.workflow.nodes[node_id].class_type)

    # -- one node, for every live job of the batch ---------------------------------------

    def _run_node(self, node_id: str, states: list[_JobState], interrupt: threading.Event) -> None:
        by_signature: dict[str, list[_JobState]] = {}
        for state in states:
            by_signature.setdefault(state.job.plan.signatures[node_id], []).append(state)
        node_call = states[0].job.workflow.nodes[node_id]
        node_cls = self.registry.get(node_call.class_type)
        missing: list[tuple[str, list[_JobState]]] = []
        for signature, group in by_signature.items():
            rerun = any(self._reruns(s.job, node_id) for s in group)
            hit = None if rerun else self.cache.get(signature)
            if hit is not None:
                for state in group:
                    self._store(state, node_id, hit, cached=True)
            else:
                missing.append((signature, group))
        if not missing:
            return
        node = node_cls()
        groups = [group for _, group in missing]
        inputs: list[dict] = []
        try:
            if interrupt.is_set():  # ComfyUI checks before every node
                raise Interrupted("interrupted by the user")
            for group in groups:
                for state in group:
                    # ComfyUI marks the node running (progress_state) before it says executing
                    state.board.start(node_id)
                    self._emit(state, EventType.PROGRESS_STATE, state.board.payload(state.outcome.prompt_id))
                    self._emit(state, EventType.EXECUTING, {"node": node_id, "display_node": node_id})
            inputs = [self._inputs(group[0], node_id) for group in groups]
            # a named range in torch.profiler traces (farm bench --profile); free when no profiler runs
            with torch.profiler.record_function(f"node {node_call.class_type}"):
                if len(groups) > 1 and hasattr(node, "run_batch"):
                    rc = self._context(node_id, [s for g in groups for s in g], interrupt,
                                       [len(g) for g in groups])
                    results = node.run_batch(rc, inputs)
                else:
                    results = [node.run(self._context(node_id, group, interrupt), **kwargs)
                               for group, kwargs in zip(groups, inputs)]
        except Interrupted as exc:
            for state in states:  # every job of the call stops, here
                state.outcome.error = exc
                state.outcome.interrupted_at = (node_id, node_call.class_type)
            return
        except Exception as exc:  # a node's own failure: report it, keep the worker alive
            error = NodeExecutionError(node_id, node_call.class_type, exc)
            for i, group in enumerate(groups):
                shown = {name: [comfy_errors.input_value(v)] for name, v in (inputs[i] if i < len(inputs) else
                                                                         node_call.inputs).items()}
                for state in group:
                    state.outcome.error = error
                    state.outcome.error_event = execution_error_payload(
                        error, state.outcome.executed_nodes, shown, state.outcome.cached_nodes)
            return
        self.node_runs[node_call.class_type] = self.node_runs.get(node_call.class_type, 0) + len(groups)
        for (signature, group), result in zip(missing, results):
            outputs = result if isinstance(result, (tuple, NodeResult)) else tuple(result)
            self.cache.put(signature, outputs)
            for state in group:
                self._store(state, node_id, outputs, cached=False)

    def _reruns(self, job: PlannedJob, node_id: str) -> bool:
        """An output node of a retry runs again rather than from the cache (JobContext.rerun_outputs)."""
        return job.context.rerun_outputs and self.registry.get(job.workflow.nodes[node_id].class_type).spec.output_node

    def _store(self, state: _JobState, node_id: str, outputs, cached: bool) -> None:
        """Keep a node's outputs for the job. An output node (one with ui) is announced with
        `executed` whether it ran or came from the cache: ComfyUI's execution.py sends a
        cached output node's stored ui again (without `executing` before it), so a client
        shows the images of a repeated prompt."""
        if isinstance(outputs, NodeResult):
            state.values[node_id] = outputs.outputs
            if outputs.ui is not None:
                state.outcome.outputs[node_id] = outputs.ui
                if not cached:
                    state.outcome.images.extend(outputs.images)
                self._emit(state, EventType.EXECUTED, {"node": node_id, "display_node": node_id,
                                                       "output": outputs.ui})
        else:
            state.values[node_id] = outputs
        if cached:
            self.node_cache_hits += 1
        else:
            state.outcome.executed_nodes.append(node_id)
        if not cached or (isinstance(outputs, NodeResult) and outputs.ui is not None):
            # ComfyUI finishes the nodes it visits: those that ran, and cached output nodes
            state.board.finish(node_id)
            self._emit(state, EventType.PROGRESS_STATE, state.board.payload(state.outcome.prompt_id))

    def _inputs(self, state: _JobState, node_id: str) -> dict:
        call = state.job.workflow.nodes[node_id]
        return {name: state.values[v.node_id][v.output_index] if isinstance(v, Link) else v
                for name, v in call.inputs.items()}

    def _context(self, node_id: str, states: list[_JobState], interrupt: threading.Event,
                 group_sizes: list[int] | None = None) -> RunContext:
        """group_sizes: for a batched call, how many of `states` each input serves, in order."""
        starts = list(itertools.accumulate([0, *(group_sizes or [len(states)])]))
        served = tuple(tuple(range(a, b)) for a, b in zip(starts, starts[1:]))
        return RunContext(self.device, self.dtype, self.models, self.images, self.node_ctx, node_id,
                          tuple(s.job.context for s in states), interrupt, tuple(s.board for s in states), served)

    # -- events --------------------------------------------------------------------------

    @staticmethod
    def _emit(state: _JobState, event_type: EventType, data: dict) -> None:
        if event_type in _STAMPED:  # ComfyUI's add_message stamps its lifecycle messages
            data = {**data, "timestamp": int(time.time() * 1000)}
        state.job.context.emit(event_type, data)

    def _finish(self, state: _JobState) -> None:
        outcome = state.outcome
        error = outcome.error
        if error is None:
            self._emit(state, EventType.EXECUTION_SUCCESS, {})
        elif isinstance(error, Interrupted):
            self._emit(state, EventType.EXECUTION_INTERRUPTED, interrupted_payload(outcome))
        else:
            payload = outcome.error_event or execution_error_payload(error, outcome.executed_nodes)
            self._emit(state, EventType.EXECUTION_ERROR, payload)
        self._emit(state, EventType.EXECUTING, {"node": None, "display_node": None})


# The lifecycle messages ComfyUI's PromptExecutor.add_message sends (and history keeps),
# each with a timestamp in milliseconds.
_STAMPED = frozenset({EventType.EXECUTION_START, EventType.EXECUTION_CACHED, EventType.EXECUTION_SUCCESS,
                      EventType.EXECUTION_ERROR, EventType.EXECUTION_INTERRUPTED})


def execution_error_payload(error: NodeExecutionError, executed: list[str], current_inputs: dict | None = None,
                            current_outputs: list[str] | None = None) -> dict:
    """ComfyUI's execution_error body (farm.records.comfy_errors spells it)."""
    return comfy_errors.node_failure(error, executed, current_inputs, current_outputs)


def interrupted_payload(outcome: JobOutcome) -> dict:
    """ComfyUI's execution_interrupted body: the node the stop landed in and what ran before.
    node_id and node_type are "" when the stop came before any node of the job ran."""
    node_id, node_type = outcome.interrupted_at or ("", "")
    return {"node_id": node_id, "node_type": node_type, "executed": list(outcome.executed_nodes)}
