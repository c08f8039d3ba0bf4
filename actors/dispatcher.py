"""Dispatcher: the farm's queue as a Ray actor, a thin shell over
farm.scheduler.core.DispatcherCore (the queue, placement and batching live there).

What the shell adds is what needs Ray:
- a pull loop per GpuWorker (the worker is ready -> core.worker_ready -> run_batch on
  the worker -> wait for its files -> core.complete / fail -> ready again). The loop
  is where a worker's death shows: the call fails with RayActorError, the core
  requeues its jobs, and a replacement worker is started;
- waking idle workers when the core's placement says so;
- long-poll waits for finished prompts (futures, `farm run`), and events for the hub.

Async actor: every method runs on one event loop, so the core (plain Python, not
thread-safe by itself) is only ever called from one thread and never mid-change.
Restarted by Ray after a crash: the core reloads the queue from SQLite, and the workers,
detached, are found again by name.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from actors import ACTOR_NAMESPACE, EVENT_HUB_NAME, OUTPUT_WRITER_NAME, WORKER_PREFIX
from farm.errors import UnknownJobError
from farm.records.events import EventType, FarmEvent, status_event
from farm.records.history import HistoryItem
from farm.records.queue import QueueSnapshot, SubmitResult
from farm.records.residency import ResidencyReport
from farm.records.workers import DeviceInfo, WorkerStatus
from farm.scheduler.batching import Batch
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.messages import BatchResult, FailureKind, JobReport, Message
from farm.scheduler.placement import FarmPolicy
from farm.scheduler.store import JobStore
from farm.scheduler.views import (
    device_info,
    error_payload,
    history_item,
    queue_item,
    work_item,
    worker_status,
)

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often the core's timers (wait bounds, replanning) are given a chance to wake a worker
IDLE_RECHECK_S = 10.0  # an idle worker asks again this often even unwoken: a safety net, not the policy
STATE_TIMEOUT_S = 5.0  # a worker that cannot say its state in this long is shown as not alive
MAX_KEPT_MESSAGES = 10_000  # lifecycle messages kept in memory for history, newest prompts


@dataclass(frozen=True)
class Finished:
    """wait_finished's answer."""

    items: list[HistoryItem]  # finished prompts, as history shows them
    unknown: list[str]  # prompt ids the queue does not know


@dataclass
class _Slot:
    """One worker the dispatcher drives."""

    worker_id: str
    handle: object  # ray ActorHandle of actors.gpu_worker.GpuWorker
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    alive: bool = True


@ray.remote(num_cpus=0)
class Dispatcher:
    def __init__(self, config):
        self.config = config  # actors.cluster.FarmConfig
        self.core = DispatcherCore(JobStore(config.db), FarmPolicy(**config.dispatcher_options), time.time,
                                   CoreConfig(max_batch=config.max_batch, max_attempts=config.max_attempts))
        self.hub = ray.get_actor(EVENT_HUB_NAME, namespace=ACTOR_NAMESPACE)
        self.writer = ray.get_actor(OUTPUT_WRITER_NAME, namespace=ACTOR_NAMESPACE)
        self._slots: dict[str, _Slot] = {}  # worker_id -> slot
        self._messages: dict[str, list[Message]] = {}  # prompt_id -> lifecycle messages (insertion order)
        self._finished = asyncio.Condition()
        self._counter = self._last_number() + 1  # ComfyUI's prompt number for the next submit
        self._stopping = False
        self._failed_starts = 0  # workers in a row that died before their first report
        loop = asyncio.get_event_loop()
        self._started = loop.create_task(self._start_workers())
        self._ticker = loop.create_task(self._tick())

    def _last_number(self) -> float:
        numbers = [j.number for j in self.core.store.pending()] + [j.number for j in self.core.store.history(1, -1)]
        numbers += [j.number for j in self.core.store.running()]
        return max([0.0, *(abs(n) for n in numbers)])

    # -- workers ------------------------------------------------------------------------------

    async def _start_workers(self) -> None:
        """Adopt the farm's live workers (after a restart), then start as many new ones as
        the target asks for."""
        from actors.gpu_worker import GpuWorker

        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == ACTOR_NAMESPACE and entry["name"].startswith(WORKER_PREFIX):
                try:
                    handle = ray.get_actor(entry["name"], namespace=ACTOR_NAMESPACE)
                except ValueError:
                    continue
                self._adopt(entry["name"], handle)
        share = getattr(self.config, "worker_gpus", 1.0) or 1.0
        target = self.config.num_workers or max(1, int(ray.cluster_resources().get("GPU", 0) / share))
        per_host = self._per_host()
        while len(self._slots) < target:
            self._spawn(GpuWorker, per_host)

    def _per_host(self) -> int:
        """Workers on the busiest host: they split its memory budgets."""
        share = getattr(self.config, "worker_gpus", 1.0) or 1.0
        gpus = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        return max(1, int(gpus / share))

    def _spawn(self, worker_class, per_host: int) -> None:
        index = 0
        while f"{WORKER_PREFIX}{index}" in self._slots:
            index += 1
        worker_id = f"{WORKER_PREFIX}{index}"
        handle = worker_class.options(name=worker_id, namespace=ACTOR_NAMESPACE, lifetime="detached",
                                      max_restarts=0, num_gpus=getattr(self.config, "worker_gpus", 1.0)).remote(
            worker_id, self.config.paths, self.writer, self.hub, self.config.tiers, per_host, self.config.dtype,
            getattr(self.config, "compile", None), max(1, getattr(self.config, "pipeline_depth", 1)))
        self._adopt(worker_id, handle)

    def _adopt(self, worker_id: str, handle) -> None:
        slot = _Slot(worker_id, handle)
        self._slots[worker_id] = slot
        slot.task = asyncio.get_event_loop().create_task(self._drive(slot))

    async def _drive(self, slot: _Slot) -> None:
        """The pull loop of one worker, until it dies or the farm stops."""
        registered = False
        try:
            state = await slot.handle.state.remote()  # waits until the actor is built
            self.core.register_worker(slot.worker_id, state.residency)
            registered = True
            self._failed_starts = 0
            report: ResidencyReport = state.residency
            # Up to `depth` batches are sent before the first returns: the worker starts the
            # next one's prompts while the GPU samples and its last one decodes, and it
            # never waits for this loop (files, SQLite) between batches.
            depth = max(1, getattr(self.config, "pipeline_depth", 1))
            inflight: list[tuple[Batch, object]] = []  # (batch, run_batch ObjectRef), oldest first
            finishing: set[str] = set()  # job ids returned but not yet recorded
            while not self._stopping:
                if len(inflight) < depth:
                    busy = tuple(j for b, _ in inflight for j in b.job_ids)
                    batch = self.core.worker_ready(slot.worker_id, report, busy, tuple(finishing))
                    if batch is not None:
                        await self._publish([status_event(self._remaining())])
                        inflight.append((batch, slot.handle.run_batch.remote([work_item(j) for j in batch.jobs])))
                        continue
                if not inflight:
                    slot.wake.clear()
                    try:
                        await asyncio.wait_for(slot.wake.wait(), IDLE_RECHECK_S)
                    except asyncio.TimeoutError:
                        pass
                    continue
                batch, ref = inflight.pop(0)
                result: BatchResult = await ref
                report = result.residency
                finishing.update(batch.job_ids)
                asyncio.get_event_loop().create_task(self._finish_then(batch, result, finishing))
        except RayActorError as exc:
            await self._lost(slot, registered, f"worker {slot.worker_id} died: {_short(exc)}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the worker shell: treat the worker as lost, keep the farm going
            log.exception("worker %s failed", slot.worker_id)
            await self._lost(slot, registered, f"worker {slot.worker_id} failed: {_short(exc)}")

    async def _lost(self, slot: _Slot, registered: bool, reason: str) -> None:
        slot.alive = False
        self._slots.pop(slot.worker_id, None)
        if registered:
            lost = self.core.requeue_worker(slot.worker_id)
            log.warning("%s; requeued %s", reason, lost)
            await self._announce_failures(lost)
            await self._publish(self._end_markers(lost))
        try:
            ray.kill(slot.handle)  # a worker that raised but lives would hold its GPU
        except Exception:
            pass
        self._wake_all()
        async with self._finished:
            self._finished.notify_all()  # some of its jobs may have used up their attempts
        if not self._stopping:
            from actors.gpu_worker import GpuWorker

            if not registered:  # it died before it could work: do not spin on a broken setup
                self._failed_starts += 1
                delay = min(60.0, 2.0 ** self._failed_starts)
                log.error("%s before it registered; starting another in %.0f s", reason, delay)
                await asyncio.sleep(delay)
                if self._stopping:
                    return

            self._spawn(GpuWorker, self._per_host())  # Ray places it once a GPU is free (now, or when a node joins)

    async def _tick(self) -> None:
        """core.tick() when its next timer is due: it names idle workers to wake."""
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            try:
                for worker_id in self.core.tick():
                    if worker_id in self._slots:
                        self._slots[worker_id].wake.set()
            except Exception:
                log.exception("dispatcher tick failed")

    def _wake_all(self) -> None:
        for slot in self._slots.values():
            slot.wake.set()

    # -- finishing a batch ------------------------------------------------------------------------

    async def _finish_then(self, batch: Batch, result: BatchResult, finishing: set[str]) -> None:
        try:
            await self._finish(batch, result)
        except Exception:
            log.exception("finishing batch %s failed", batch.job_ids)
        finally:
            finishing.difference_update(batch.job_ids)

    async def _finish(self, batch: Batch, result: BatchResult) -> None:
        for load in result.loads:
            self.core.observe_load(load.source, load.nbytes, load.seconds)
        images = [ref for report in result.reports for ref in report.images]
        write_error = None
        if images:
            try:
                await self.writer.wait.remote(images)
            except Exception as exc:  # disk full, permissions: the jobs' outputs are not there
                write_error = f"writing the images failed: {_short(exc)}"
        for report in result.reports:
            self._keep_messages(report.prompt_id, report.messages)
            self._record(report, write_error)
        await self._announce_failures([r.prompt_id for r in result.reports])
        await self._publish(self._end_markers([r.prompt_id for r in result.reports]))
        await self._publish([status_event(self._remaining())])
        async with self._finished:
            self._finished.notify_all()

    def _record(self, report: JobReport, write_error: str | None) -> None:
        if report.ok and write_error is None:
            self.core.complete(report.prompt_id, report.outputs)
        elif report.ok:
            self.core.fail(report.prompt_id, write_error, retryable=True)
        elif report.failure is FailureKind.INVALID:
            self.core.fail(report.prompt_id, report.error, retryable=True)  # another node may have the file
        else:
            self.core.fail(report.prompt_id, report.error)

    async def _announce_failures(self, prompt_ids: list[str]) -> None:
        """An execution_error for prompts the dispatcher failed itself (attempts used up):
        no worker told their listeners."""
        events = []
        for prompt_id in prompt_ids:
            job = self._job(prompt_id)
            if job is None or job.state is not JobState.FAILED:
                continue
            if any(m.event is EventType.EXECUTION_ERROR for m in self._messages.get(prompt_id, ())):
                continue
            payload = {**error_payload(job), "prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}
            self._keep_messages(prompt_id, [Message(EventType.EXECUTION_ERROR, payload)])
            events.append(FarmEvent(EventType.EXECUTION_ERROR, payload, job.client_id))
        if events:
            await self._publish(events)

    def _end_markers(self, prompt_ids: list[str]) -> list[FarmEvent]:
        """ComfyUI's `executing {node: null}` for prompts that just reached history. It is sent
        after the record is stored, as ComfyUI does, because clients fetch /history/{id} the
        moment they see it. A prompt put back in the queue gets none yet."""
        events = []
        for prompt_id in prompt_ids:
            job = self._job(prompt_id)
            if job is not None and job.state.finished:
                events.append(FarmEvent(EventType.EXECUTING, {"node": None, "display_node": None,
                                                              "prompt_id": prompt_id}, job.client_id))
        return events

    def _keep_messages(self, prompt_id: str, messages: list[Message]) -> None:
        self._messages[prompt_id] = list(messages)
        while len(self._messages) > MAX_KEPT_MESSAGES:
            self._messages.pop(next(iter(self._messages)))

    async def _publish(self, events: list[FarmEvent]) -> None:
        try:
            self.hub.publish.remote(events)  # not awaited: a slow hub never holds up the queue
        except Exception:
            log.warning("event hub unavailable; %d events dropped", len(events))

    def _job(self, prompt_id: str) -> Job | None:
        try:
            return self.core.job(prompt_id)
        except UnknownJobError:
            return None

    def _remaining(self) -> int:
        snap = self.core.snapshot()
        return len(snap.running) + len(snap.pending)

    # -- the API (actors.cluster calls these) ----------------------------------------------------

    async def ready(self) -> int:
        """Wait until the workers are started; returns how many there are."""
        await asyncio.shield(self._started)
        return len(self._slots)

    async def submit(self, jobs: list[Job]) -> list[SubmitResult]:
        """Store each job (durably) and queue it. A job's number None takes the next counter
        (negated with front, as ComfyUI does). Raises DuplicatePromptError on a reused id;
        jobs before it in the list stay submitted."""
        results = []
        for job in jobs:
            if job.number is None:
                job.number = -self._counter if job.front else self._counter
            self._counter = max(self._counter, abs(job.number)) + 1
            placement = self.core.submit(job)
            results.append(SubmitResult(job.job_id, job.number))
            if placement.wake and placement.worker_id in self._slots:
                self._slots[placement.worker_id].wake.set()
        await self._publish([status_event(self._remaining())])
        return results

    async def wait_finished(self, prompt_ids: list[str], timeout_s: float = 10.0) -> "Finished":
        """History items of those prompts that are finished, waiting up to timeout_s for at
        least one. Ids the queue does not know (never submitted, or deleted) come back in
        `unknown`: they would never finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            done, unknown = [], []
            for prompt_id in prompt_ids:
                job = self._job(prompt_id)
                if job is None:
                    unknown.append(prompt_id)
                elif job.state.finished:
                    done.append(history_item(job, self._messages.get(prompt_id)))
            remaining = deadline - loop.time()
            if done or unknown or remaining <= 0:
                return Finished(done, unknown)
            async with self._finished:
                try:
                    await asyncio.wait_for(self._finished.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    async def job_state(self, prompt_id: str) -> JobState | None:
        """None for a prompt the queue does not know (never submitted, or deleted)."""
        job = self._job(prompt_id)
        return None if job is None else job.state

    async def queue(self) -> QueueSnapshot:
        snap = self.core.snapshot()
        return QueueSnapshot([queue_item(j) for j in snap.running], [queue_item(j) for j in snap.pending])

    async def queue_remaining(self) -> int:
        return self._remaining()

    async def delete_queued(self, prompt_ids: list[str]) -> int:
        count = self.core.delete_pending(prompt_ids)
        await self._publish([status_event(self._remaining())])
        return count

    async def clear_queue(self) -> int:
        count = self.core.clear_pending()
        await self._publish([status_event(self._remaining())])
        return count

    async def history(self, max_items: int | None = None, offset: int = 0) -> list[HistoryItem]:
        return [history_item(j, self._messages.get(j.job_id)) for j in self.core.store.history(max_items, offset)]

    async def history_item(self, prompt_id: str) -> HistoryItem | None:
        job = self.core.store.get(prompt_id)
        if job is None or not job.state.finished:
            return None
        return history_item(job, self._messages.get(prompt_id))

    async def delete_history(self, prompt_ids: list[str]) -> int:
        for prompt_id in prompt_ids:
            self._messages.pop(prompt_id, None)
        return self.core.store.delete_history(prompt_ids)

    async def clear_history(self) -> int:
        self._messages.clear()
        return self.core.store.clear_history()

    async def interrupt(self, prompt_id: str | None = None) -> list[str]:
        """Stop running prompts (all with None). Another prompt sharing a batched call with
        one that is stopped runs again at once on the same worker."""
        chosen = self.core.interrupt(prompt_id)
        await self._push_interrupts(chosen)
        return chosen

    async def cancel(self, prompt_id: str) -> bool:
        job = self._job(prompt_id)
        if job is None:
            return False
        running = job.state is JobState.RUNNING
        if not self.core.cancel(prompt_id):
            return False
        if running:
            await self._push_interrupts([prompt_id])
        else:
            async with self._finished:
                self._finished.notify_all()
        await self._publish([status_event(self._remaining())])
        return True

    async def _push_interrupts(self, prompt_ids: list[str]) -> None:
        by_worker: dict[str, list[str]] = {}
        for prompt_id in prompt_ids:
            job = self._job(prompt_id)
            if job is not None and job.worker_id in self._slots:
                by_worker.setdefault(job.worker_id, []).append(prompt_id)
        await asyncio.gather(*(self._slots[w].handle.interrupt.remote(ids) for w, ids in by_worker.items()),
                             return_exceptions=True)

    async def free(self, unload_models: bool, free_memory: bool) -> None:
        await asyncio.gather(*(s.handle.free.remote(unload_models, free_memory) for s in self._slots.values()),
                             return_exceptions=True)

    async def _states(self) -> dict[str, object]:
        slots = list(self._slots.values())

        async def one(slot: _Slot):
            try:
                return await asyncio.wait_for(slot.handle.state.remote(), STATE_TIMEOUT_S)
            except Exception:
                return None

        states = await asyncio.gather(*(one(s) for s in slots))
        return {s.worker_id: state for s, state in zip(slots, states)}

    async def workers(self) -> list[WorkerStatus]:
        states = await self._states()
        out = []
        for worker_id, state in states.items():
            view = self.core.fleet.workers.get(worker_id)
            backlog = 0 if view is None else len(view.queue) + len(view.running)
            out.append(worker_status(state, worker_id, backlog, state is not None))
        return out

    async def devices(self) -> list[DeviceInfo]:
        return [device_info(state) for state in (await self._states()).values() if state is not None]

    async def paths(self):
        """The farm's folders (farm.records.paths.FarmPaths), for clients that validate against them."""
        return self.config.paths

    async def worker_ids(self) -> list[str]:
        return list(self._slots)

    async def stop_workers(self) -> None:
        self._stopping = True
        for slot in list(self._slots.values()):
            if slot.task is not None:
                slot.task.cancel()
            try:
                ray.kill(slot.handle)
            except Exception:
                pass
        self._slots.clear()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."
