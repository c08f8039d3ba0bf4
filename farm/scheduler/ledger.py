"""Ledger: what the farm's dispatcher decides about its prompts, without Ray.

It wraps DispatcherCore (queue, placement, batching) with the rest of the bookkeeping a
ComfyUI-compatible queue needs: prompt numbers (`front` negates them), the lifecycle
messages history shows, recording a batch's reports, the execution_error for a prompt
the dispatcher failed itself, the `executing {node: null}` end marker once history holds
a prompt, and the queue / history views.

Nothing here publishes, waits or calls a worker: each change returns what the caller
(actors/dispatcher.py) must do about it, as small records: events to publish, workers to
wake, whether long-polls for finished prompts should look again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from farm.errors import FarmError, UnknownJobError
from farm.records.events import EventType, FarmEvent, status_event
from farm.records.history import HistoryItem
from farm.records.queue import QueueSnapshot, SubmitResult
from farm.records.residency import ResidencyReport
from farm.records.workers import WorkerStatus
from farm.scheduler.batching import Batch
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.messages import (
    BatchResult,
    FailureKind,
    JobReport,
    Message,
    WorkerState,
    WorkItem,
)
from farm.scheduler.metrics import FarmMeter
from farm.scheduler.placement import PlacementPolicy
from farm.scheduler.store import JobStore
from farm.scheduler.views import (
    error_payload,
    history_item,
    queue_item,
    work_item,
    worker_status,
)

MAX_KEPT_MESSAGES = 10_000  # lifecycle messages kept in memory for history, newest prompts


@dataclass(frozen=True)
class Outcome:
    """What the caller must do after a change."""

    events: list[FarmEvent] = field(default_factory=list)  # to publish, in order
    wake: list[str] = field(default_factory=list)  # idle worker ids to wake
    finished: bool = False  # a prompt may have finished (or vanished): long-polls look again


@dataclass(frozen=True)
class SubmitOutcome(Outcome):
    results: list[SubmitResult] = field(default_factory=list)  # one per job stored
    rejected: FarmError | None = None  # why the job after `results` was refused; later ones were not tried


@dataclass(frozen=True)
class Dispatch(Outcome):
    """A batch for a worker: the batch, and its jobs as they travel."""

    batch: Batch | None = None
    items: list[WorkItem] = field(default_factory=list)


@dataclass(frozen=True)
class StopOutcome(Outcome):
    stopped: list[str] = field(default_factory=list)  # prompts cancelled or asked to stop
    interrupts: dict[str, list[str]] = field(default_factory=dict)  # worker id -> its running prompts to stop


@dataclass(frozen=True)
class CountOutcome(Outcome):
    count: int = 0  # prompts deleted


@dataclass(frozen=True)
class Finished:
    """wait_finished's answer."""

    items: list[HistoryItem]  # finished prompts, as history shows them
    unknown: list[str]  # prompt ids the queue does not know

    @property
    def any(self) -> bool:
        return bool(self.items or self.unknown)


class Ledger:
    def __init__(self, store: JobStore, policy: PlacementPolicy, clock: Callable[[], float],
                 config: CoreConfig = CoreConfig(), max_kept_messages: int = MAX_KEPT_MESSAGES):
        self.clock = clock  # seconds; also the core's
        self.core = DispatcherCore(store, policy, clock, config)
        self.meter = FarmMeter()  # GET /metrics: jobs that reached history since this process started
        self.max_kept_messages = max_kept_messages
        self._messages: dict[str, list[Message]] = {}  # prompt_id -> lifecycle messages (insertion order)
        self._counter = self._last_number() + 1  # ComfyUI's prompt number for the next submit

    def _last_number(self) -> float:
        store = self.core.store
        numbers = [j.number for j in (*store.pending(), *store.running(), *store.history(1, -1))]
        return max([0.0, *(abs(n) for n in numbers)])

    # -- jobs in ------------------------------------------------------------------------------

    def submit(self, jobs: list[Job]) -> SubmitOutcome:
        """Store each job (durably) and queue it. A job's number None takes the next counter
        (negated with front, as ComfyUI does). A refused job (a reused id) stops the list:
        those before it stay submitted, and the outcome says why."""
        results, wake, rejected = [], [], None
        for job in jobs:
            if job.number is None:
                job.number = -self._counter if job.front else self._counter
            try:
                placement = self.core.submit(job)
            except FarmError as exc:
                rejected = exc
                break
            self._counter = max(self._counter, abs(job.number)) + 1
            results.append(SubmitResult(job.job_id, job.number))
            if placement.wake:
                wake.append(placement.worker_id)
        return SubmitOutcome(events=[self._status()], wake=wake, results=results, rejected=rejected)

    # -- workers ------------------------------------------------------------------------------

    def register_worker(self, worker_id: str, report: ResidencyReport) -> None:
        self.core.register_worker(worker_id, report)

    def next_batch(self, worker_id: str, report: ResidencyReport, busy: tuple[str, ...] = (),
                   finishing: tuple[str, ...] = ()) -> Dispatch | None:
        """The worker can take a batch: its next one, or None (it idles until woken).
        `busy`/`finishing`: jobs it still runs, or returned with files still being written
        (DispatcherCore.worker_ready: a worker asks early to hold one batch in reserve)."""
        batch = self.core.worker_ready(worker_id, report, busy, finishing)
        if batch is None:
            return None
        return Dispatch(events=[self._status()], batch=batch, items=[work_item(j) for j in batch.jobs])

    def finish_batch(self, result: BatchResult, failed_writes: dict[object, BaseException] | None = None) -> Outcome:
        """A worker's reports, once the writer's futures for their files (JobReport.writes)
        are done; `failed_writes` holds those that raised. A prompt whose images did not
        reach the disk is retried: the next attempt may write them."""
        for load in result.loads:
            self.core.observe_load(load.source, load.nbytes, load.seconds)
        for report in result.reports:
            self._keep_messages(report.prompt_id, report.messages)
            self._record(report, _write_error(report, failed_writes or {}))
        ids = [r.prompt_id for r in result.reports]
        # ComfyUI's prompt worker: task_done (history stored, queue status sent), then the end marker
        return Outcome(events=[*self._announce_failures(ids), self._status(), *self._end_markers(ids)],
                       finished=True)

    def worker_lost(self, worker_id: str, registered: bool) -> Outcome:
        """The worker died or failed: its jobs are placed again (or fail, attempts used up)
        and every other worker is woken to take them."""
        lost = self.core.requeue_worker(worker_id) if registered else []
        return Outcome(events=[*self._announce_failures(lost), *self._end_markers(lost)],
                       wake=list(self.core.fleet.workers), finished=True)

    def tick(self) -> list[str]:
        """Idle workers to wake now that a timer (wait bound, replanning) is due."""
        return self.core.tick()

    def worker_statuses(self, states: dict[str, WorkerState | None]) -> list[WorkerStatus]:
        """What each worker said about itself (None: it did not answer), with its backlog."""
        out = []
        for worker_id, state in states.items():
            view = self.core.fleet.workers.get(worker_id)
            backlog = 0 if view is None else len(view.queue) + len(view.running)
            out.append(worker_status(state, worker_id, backlog, state is not None))
        return out

    # -- stopping prompts ---------------------------------------------------------------------

    def cancel(self, prompt_id: str) -> StopOutcome:
        """A queued prompt leaves the queue with no history entry; a running one is
        interrupted on its worker (it then ends cancelled, in history)."""
        job = self.job(prompt_id)
        running = job is not None and job.state is JobState.RUNNING
        if job is None or not self.core.cancel(prompt_id):
            return StopOutcome()
        return StopOutcome(events=[self._status()], finished=not running, stopped=[prompt_id],
                           interrupts=self._by_worker([prompt_id]) if running else {})

    def interrupt(self, prompt_id: str | None = None) -> StopOutcome:
        """Stop running prompts (all with None); `interrupts` says where they run."""
        chosen = self.core.interrupt(prompt_id)
        return StopOutcome(stopped=chosen, interrupts=self._by_worker(chosen))

    def delete_queued(self, prompt_ids: list[str]) -> CountOutcome:
        """Queued prompts leave without a history entry (POST /queue {"delete": [...]})."""
        count = self.core.delete_pending(prompt_ids)
        return CountOutcome(events=[self._status()], finished=True, count=count)

    def clear_queue(self) -> CountOutcome:
        count = self.core.clear_pending()
        return CountOutcome(events=[self._status()], finished=True, count=count)

    # -- views --------------------------------------------------------------------------------

    def job(self, prompt_id: str) -> Job | None:
        try:
            return self.core.job(prompt_id)
        except UnknownJobError:
            return None

    def job_state(self, prompt_id: str) -> JobState | None:
        """None for a prompt the queue does not know (never submitted, or deleted)."""
        job = self.job(prompt_id)
        return None if job is None else job.state

    def finished(self, prompt_ids: list[str]) -> Finished:
        """Which of those prompts are finished (as history shows them) and which the queue
        does not know (never submitted, or deleted: they would never finish)."""
        done, unknown = [], []
        for prompt_id in prompt_ids:
            job = self.job(prompt_id)
            if job is None:
                unknown.append(prompt_id)
            elif job.state.finished:
                done.append(history_item(job, self._messages.get(prompt_id)))
        return Finished(done, unknown)

    def remaining(self) -> int:
        snap = self.core.snapshot()
        return len(snap.running) + len(snap.pending)

    def queue(self) -> QueueSnapshot:
        snap = self.core.snapshot()
        return QueueSnapshot([queue_item(j) for j in snap.running], [queue_item(j) for j in snap.pending])

    def history(self, max_items: int | None = None, offset: int = 0) -> list[HistoryItem]:
        return [history_item(j, self._messages.get(j.job_id)) for j in self.core.store.history(max_items, offset)]

    def history_item(self, prompt_id: str) -> HistoryItem | None:
        job = self.core.store.get(prompt_id)
        if job is None or not job.state.finished:
            return None
        return history_item(job, self._messages.get(prompt_id))

    def delete_history(self, prompt_ids: list[str]) -> int:
        for prompt_id in prompt_ids:
            self._messages.pop(prompt_id, None)
        return self.core.store.delete_history(prompt_ids)

    def clear_history(self) -> int:
        self._messages.clear()
        return self.core.store.clear_history()

    # -- internals ----------------------------------------------------------------------------

    def _record(self, report: JobReport, write_error: str | None) -> None:
        if report.ok and write_error is None:
            self.core.complete(report.prompt_id, report.outputs)
        elif report.ok:
            self.core.fail(report.prompt_id, write_error, retryable=True)
        elif report.failure is FailureKind.INVALID:
            self.core.fail(report.prompt_id, report.error, retryable=True)  # another node may have the file
        else:
            self.core.fail(report.prompt_id, report.error)

    def _announce_failures(self, prompt_ids: list[str]) -> list[FarmEvent]:
        """An execution_error for prompts the dispatcher failed itself (attempts used up):
        no worker told their listeners."""
        events = []
        for prompt_id in prompt_ids:
            job = self.job(prompt_id)
            if job is None or job.state is not JobState.FAILED:
                continue
            if any(m.event is EventType.EXECUTION_ERROR for m in self._messages.get(prompt_id, ())):
                continue
            payload = {**error_payload(job), "prompt_id": prompt_id, "timestamp": int(self.clock() * 1000)}
            self._keep_messages(prompt_id, [Message(EventType.EXECUTION_ERROR, payload)])
            events.append(FarmEvent(EventType.EXECUTION_ERROR, payload, job.client_id))
        return events

    def _end_markers(self, prompt_ids: list[str]) -> list[FarmEvent]:
        """ComfyUI's `executing {node: null}` for prompts that just reached history. It goes
        after the record is stored, as ComfyUI does, because clients fetch /history/{id} the
        moment they see it. A prompt put back in the queue gets none yet."""
        events = []
        for prompt_id in prompt_ids:
            job = self.job(prompt_id)
            if job is not None and job.state.finished:
                self.meter.finished(job)
                events.append(FarmEvent(EventType.EXECUTING, {"node": None, "prompt_id": prompt_id}, job.client_id))
        return events

    def _keep_messages(self, prompt_id: str, messages: list[Message]) -> None:
        self._messages.pop(prompt_id, None)  # a rerun counts as newest
        self._messages[prompt_id] = list(messages)
        while len(self._messages) > self.max_kept_messages:
            self._messages.pop(next(iter(self._messages)))

    def _by_worker(self, prompt_ids: list[str]) -> dict[str, list[str]]:
        by_worker: dict[str, list[str]] = {}
        for prompt_id in prompt_ids:
            job = self.job(prompt_id)
            if job is not None and job.worker_id is not None:
                by_worker.setdefault(job.worker_id, []).append(prompt_id)
        return by_worker

    def _status(self) -> FarmEvent:
        return status_event(self.remaining())


def _write_error(report: JobReport, failed: dict[object, BaseException]) -> str | None:
    error = next((failed[h] for h in report.writes if h in failed), None)
    if error is None:
        return None
    cause = getattr(error, "cause", None)  # a remote writer's own error, not its transport's wrapper
    text = " ".join(str(cause if isinstance(cause, BaseException) else error).split())
    return f"writing the images failed: {text[:300]}"
