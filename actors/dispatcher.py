"""Dispatcher: the farm's queue as a Ray actor, a thin shell over farm.scheduler.ledger.Ledger
(prompt numbers, history messages, recording reports; queue and placement in its core).

The shell holds what needs Ray and asyncio: a pull loop per GpuWorker (ledger.next_batch
-> run_batch on the worker -> await the writer's futures for its files -> finish_batch),
where a worker's death shows (RayActorError: its jobs are requeued, a new worker started);
waking idle workers, publishing to the hub, and long-polls for finished prompts. Every
method runs on one event loop, so the ledger is only ever called from one thread. Ray
restarts it after a crash: the ledger reloads SQLite, and detached workers are found by name.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TypeVar

import ray
from ray.exceptions import RayActorError

from actors import ACTOR_NAMESPACE, EVENT_HUB_NAME, OUTPUT_WRITER_NAME, WORKER_PREFIX
from actors.elastic import ElasticPool, workers_per_host
from farm.errors import one_line
from farm.records.history import HistoryItem
from farm.records.queue import QueueSnapshot, SubmitResult
from farm.records.workers import DeviceInfo, WorkerStatus
from farm.scheduler.core import CoreConfig
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.ledger import Finished, Ledger, Outcome
from farm.scheduler.messages import BatchResult
from farm.scheduler.metrics import farm_metrics
from farm.scheduler.placement import FarmPolicy
from farm.scheduler.store import JobStore
from farm.scheduler.views import device_info

log = logging.getLogger(__name__)
O = TypeVar("O", bound=Outcome)

TICK_S = 0.5  # how often the core's timers (wait bounds, replanning) are given a chance to wake a worker
IDLE_RECHECK_S = 10.0  # an idle worker asks again this often even unwoken: a safety net, not the policy
STATE_TIMEOUT_S = 5.0  # a worker that cannot say its state in this long is shown as not alive


@dataclass
class _Slot:
    worker_id: str
    handle: object  # ray ActorHandle of actors.gpu_worker.GpuWorker
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set: ask the ledger for work now
    task: asyncio.Task | None = None  # its pull loop
    retired: bool = False  # stopped on scale-down: its loop ends, and it is not replaced


@ray.remote(num_cpus=0)
class Dispatcher:
    def __init__(self, config):
        self.config = config  # actors.cluster.FarmConfig
        self.ledger = Ledger(JobStore(config.db), FarmPolicy(**config.dispatcher_options), time.time,
                             CoreConfig(max_batch=config.max_batch, max_attempts=config.max_attempts,
                                        sizer=config.batch_sizer,
                                        fetch_bytes_per_s=config.fetch_bytes_per_s))
        self.hub = ray.get_actor(EVENT_HUB_NAME, namespace=ACTOR_NAMESPACE)
        self.writer = ray.get_actor(OUTPUT_WRITER_NAME, namespace=ACTOR_NAMESPACE)
        self._slots: dict[str, _Slot] = {}  # worker_id -> slot
        self._finished = asyncio.Condition()
        self._stopping = False
        self._failed_starts = 0  # workers in a row that died before their first report
        self._replacing = 0  # lost workers whose replacement is not started yet
        self.retired = 0  # idle workers stopped on scale-down
        self.elastic = ElasticPool(config.num_workers, config.max_workers, config.autoscale)
        self._outbox: asyncio.Queue[list] = asyncio.Queue()  # events for the hub, in order
        loop = asyncio.get_event_loop()
        self._publisher = loop.create_task(self._publish_in_order())
        self._started = loop.create_task(self._start_workers())
        self._ticker = loop.create_task(self._tick())

    # -- workers ------------------------------------------------------------------------------

    async def _start_workers(self) -> None:
        """Adopt the farm's live workers (after a restart), then start as many new ones as
        the target asks for."""
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == ACTOR_NAMESPACE and entry["name"].startswith(WORKER_PREFIX):
                try:
                    handle = ray.get_actor(entry["name"], namespace=ACTOR_NAMESPACE)
                except ValueError:
                    continue
                self._adopt(entry["name"], handle)
        share = self.config.worker_gpus or 1.0
        target = self.config.num_workers or max(1, int(ray.cluster_resources().get("GPU", 0) / share))
        while len(self._slots) < target:
            self._spawn()

    def _spawn(self) -> None:
        """A new worker; Ray places it once a GPU is free (now, or when a node joins)."""
        from actors.gpu_worker import GpuWorker

        per_host = max(1, int(workers_per_host() / (self.config.worker_gpus or 1.0)))  # they split its budgets
        index = 0
        while f"{WORKER_PREFIX}{index}" in self._slots:
            index += 1
        worker_id = f"{WORKER_PREFIX}{index}"
        handle = GpuWorker.options(name=worker_id, namespace=ACTOR_NAMESPACE, lifetime="detached",
                                   max_restarts=0, num_gpus=self.config.worker_gpus).remote(
            worker_id, self.config.paths, self.writer, self.hub, self.config.tiers, per_host, self.config.dtype,
            self.config.compile, max(1, self.config.pipeline_depth))
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
            self.ledger.register_worker(slot.worker_id, state.residency)
            registered = True
            self._failed_starts = 0
            report = state.residency
            # Up to `depth` batches are sent before the first returns: the worker starts the
            # next one's prompts while the GPU samples and its last one decodes, and it never
            # waits for this loop (files, SQLite) between batches.
            depth = max(1, self.config.pipeline_depth)
            inflight: list[tuple[tuple[str, ...], object]] = []  # (job ids, run_batch ObjectRef), oldest first
            finishing: set[str] = set()  # job ids returned whose files are not yet on disk
            while not self._stopping and not slot.retired:
                if len(inflight) < depth:
                    busy = tuple(j for ids, _ in inflight for j in ids)
                    dispatch = self.ledger.next_batch(slot.worker_id, report, busy, tuple(finishing))
                    if dispatch is not None:
                        await self._apply(dispatch)
                        inflight.append((dispatch.batch.job_ids, slot.handle.run_batch.remote(dispatch.items)))
                        continue
                if not inflight:
                    slot.wake.clear()
                    try:
                        await asyncio.wait_for(slot.wake.wait(), IDLE_RECHECK_S)
                    except asyncio.TimeoutError:
                        pass
                    continue
                ids, ref = inflight.pop(0)
                result: BatchResult = await ref
                report = result.residency
                finishing.update(ids)
                asyncio.get_event_loop().create_task(self._finish(slot, ids, result, finishing))
        except RayActorError as exc:
            if slot.retired:
                return
            await self._lost(slot, registered, f"worker {slot.worker_id} died: {_short(exc)}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the worker shell: treat the worker as lost, keep the farm going
            log.exception("worker %s failed", slot.worker_id)
            await self._lost(slot, registered, f"worker {slot.worker_id} failed: {_short(exc)}")

    async def _finish(self, slot: _Slot, ids: tuple[str, ...], result: BatchResult, finishing: set[str]) -> None:
        """Record a returned batch once the writer's futures for its files are done, beside
        the pull loop, which has already handed the worker its next batch."""
        try:
            failed = await _failed_writes(result)
            await self._apply(self.ledger.finish_batch(result, failed))
            if failed:  # its cached SaveImage outputs name files that are not there: render them anew
                await slot.handle.free.remote(False, True)
        except Exception:
            log.exception("finishing batch %s failed", ids)
        finally:
            finishing.difference_update(ids)

    async def _lost(self, slot: _Slot, registered: bool, reason: str) -> None:
        if slot.retired:  # stopped on purpose: _retire did the bookkeeping, nothing replaces it
            return
        self._slots.pop(slot.worker_id, None)
        self._replacing += 1  # the pool check counts it: its replacement is on the way
        try:
            await self._replace(slot, registered, reason)
        finally:
            self._replacing -= 1

    async def _replace(self, slot: _Slot, registered: bool, reason: str) -> None:
        log.warning("%s", reason)
        await self._apply(self.ledger.worker_lost(slot.worker_id, registered))
        try:
            ray.kill(slot.handle)  # a worker that raised but lives would hold its GPU
        except Exception:
            pass
        if self._stopping:
            return
        if not registered:  # it died before it could work: do not spin on a broken setup
            self._failed_starts += 1
            delay = min(60.0, 2.0 ** self._failed_starts)
            log.error("%s before it registered; starting another in %.0f s", reason, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
        self._spawn()

    async def _tick(self) -> None:
        """The ledger's timers, when due, name idle workers to wake."""
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            try:
                self._wake(self.ledger.tick())
                if self._started.done():  # a node joined: a worker per new GPU; the queue: GPUs to ask for
                    for _ in range(self.elastic.missing_workers(len(self._slots) + self._replacing)):
                        self._spawn()
                self.elastic.update_request(self.ledger.core.fleet)
                for worker_id in self.elastic.to_retire(self.ledger.core.fleet, list(self._slots)):
                    await self._retire(worker_id)
            except Exception:
                log.exception("dispatcher tick failed")

    async def _retire(self, worker_id: str) -> None:
        """Stop an idle worker the queue no longer wants, freeing its GPU (and in the end its
        node) for the autoscaler; it is not replaced."""
        view = self.ledger.core.fleet.workers.get(worker_id)
        if view is None or view.running or len(view.queue) or worker_id not in self._slots:
            return  # given a batch since it was picked (an earlier retirement awaited)
        slot = self._slots.pop(worker_id)
        # before the kill: its loop must neither ask for work again nor see a death and replace
        # it (a cancel alone is not enough: asyncio.wait_for may swallow it on Python 3.11)
        slot.retired = True
        if slot.task is not None:
            slot.task.cancel()
        await self._apply(self.ledger.worker_lost(worker_id, True))  # nothing runs there: nothing requeued
        try:
            ray.kill(slot.handle)
        except Exception as exc:  # already gone
            log.debug("retiring %s: %s", worker_id, exc)
        self.retired += 1
        log.info("retired idle worker %s: the queue wants fewer GPUs", worker_id)

    async def _publish_in_order(self) -> None:
        """One publish at a time: the hub is an async actor, which does not promise to run
        one caller's calls in the order they were made."""
        while True:
            events = await self._outbox.get()
            try:
                await self.hub.publish.remote(events)
            except Exception:
                log.warning("event hub unavailable; %d events dropped", len(events))

    def _wake(self, worker_ids: list[str]) -> None:
        for worker_id in worker_ids:
            if worker_id in self._slots:
                self._slots[worker_id].wake.set()

    async def _apply(self, outcome: O) -> O:
        """Do what the ledger said: publish, wake workers, let long-polls look again."""
        if outcome.events:
            self._outbox.put_nowait(outcome.events)  # a slow hub never holds up the queue
        self._wake(outcome.wake)
        if outcome.finished:
            async with self._finished:
                self._finished.notify_all()
        return outcome

    # -- the API (actors.cluster calls these) ----------------------------------------------------

    async def ready(self) -> int:
        """Wait until the workers are started; returns how many there are."""
        await asyncio.shield(self._started)
        return len(self._slots)

    async def submit(self, jobs: list[Job]) -> list[SubmitResult]:
        """Store and queue each job. Raises DuplicatePromptError on a reused id; jobs before
        it in the list stay submitted."""
        outcome = await self._apply(self.ledger.submit(jobs))
        if outcome.rejected is not None:
            raise outcome.rejected
        return outcome.results

    async def wait_finished(self, prompt_ids: list[str], timeout_s: float = 10.0) -> Finished:
        """History items of those prompts that are finished, waiting up to timeout_s for at
        least one. Ids the queue does not know come back in `unknown`: they would never finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            finished = self.ledger.finished(prompt_ids)
            remaining = deadline - loop.time()
            if finished.any or remaining <= 0:
                return finished
            async with self._finished:
                try:
                    await asyncio.wait_for(self._finished.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    async def job_state(self, prompt_id: str) -> JobState | None:
        return self.ledger.job_state(prompt_id)

    async def queue(self) -> QueueSnapshot:
        return self.ledger.queue()

    async def queue_remaining(self) -> int:
        return self.ledger.remaining()

    async def delete_queued(self, prompt_ids: list[str]) -> int:
        return (await self._apply(self.ledger.delete_queued(prompt_ids))).count

    async def clear_queue(self) -> int:
        return (await self._apply(self.ledger.clear_queue())).count

    async def history(self, max_items: int | None = None, offset: int = 0) -> list[HistoryItem]:
        return self.ledger.history(max_items, offset)

    async def history_item(self, prompt_id: str) -> HistoryItem | None:
        return self.ledger.history_item(prompt_id)

    async def delete_history(self, prompt_ids: list[str]) -> int:
        return self.ledger.delete_history(prompt_ids)

    async def clear_history(self) -> int:
        return self.ledger.clear_history()

    async def interrupt(self, prompt_id: str | None = None) -> list[str]:
        """Stop running prompts (all with None). Another prompt sharing a batched call with
        one that is stopped runs again at once on the same worker."""
        outcome = self.ledger.interrupt(prompt_id)
        await self._stop(outcome.interrupts)
        return outcome.stopped

    async def cancel(self, prompt_id: str) -> bool:
        outcome = self.ledger.cancel(prompt_id)
        await self._stop(outcome.interrupts)
        return bool((await self._apply(outcome)).stopped)

    async def _stop(self, interrupts: dict[str, list[str]]) -> None:
        calls = [self._slots[w].handle.interrupt.remote(ids) for w, ids in interrupts.items() if w in self._slots]
        await asyncio.gather(*calls, return_exceptions=True)

    async def free(self, unload_models: bool, free_memory: bool) -> None:
        await asyncio.gather(*(s.handle.free.remote(unload_models, free_memory) for s in self._slots.values()),
                             return_exceptions=True)

    async def _states(self) -> dict[str, object]:
        slots = list(self._slots.values())
        states = await asyncio.gather(*(asyncio.wait_for(s.handle.state.remote(), STATE_TIMEOUT_S) for s in slots),
                                      return_exceptions=True)
        states = [None if isinstance(state, BaseException) else state for state in states]
        return {s.worker_id: state for s, state in zip(slots, states)}

    async def workers(self) -> list[WorkerStatus]:
        return self.ledger.worker_statuses(await self._states())

    async def devices(self) -> list[DeviceInfo]:
        return [device_info(state) for state in (await self._states()).values() if state is not None]

    async def paths(self):
        """The farm's folders (farm.records.paths.FarmPaths), for clients that validate against them."""
        return self.config.paths

    async def metrics(self):
        """farm.records.metrics.FarmMetrics: the queue, the counters, every worker's GPU."""
        states = await self._states()
        core = self.ledger.core
        return farm_metrics(self.ledger.meter, core.fleet, core.clock(), states, self.elastic.requested,
                            self.elastic.wanted())

    async def worker_ids(self) -> list[str]:
        return list(self._slots)

    async def set_autoscale(self, knobs) -> None:
        """New autoscaling knobs (farm.scheduler.autoscale.ScaleKnobs), or None to stop
        asking the autoscaler (what was asked is withdrawn). Kept until the dispatcher
        restarts, which goes back to FarmConfig.autoscale."""
        self.elastic.configure(knobs)

    async def stop_workers(self) -> None:
        self._stopping = True
        self.elastic.configure(None)
        for slot in list(self._slots.values()):
            if slot.task is not None:
                slot.task.cancel()
            try:
                ray.kill(slot.handle)
            except Exception:
                pass
        self._slots.clear()


async def _failed_writes(result: BatchResult) -> dict[object, BaseException]:
    """Await the writer's futures for the batch's images (each is done once its files are
    on disk); those that failed, with their error."""
    handles = list(dict.fromkeys(h for report in result.reports for h in report.writes))
    outcomes = await asyncio.gather(*handles, return_exceptions=True)
    return {h: o for h, o in zip(handles, outcomes) if isinstance(o, BaseException)}


def _short(exc: BaseException, limit: int = 300) -> str:
    log.warning("%s", one_line(exc, 2000), exc_info=exc)  # the (remote) traceback: to the log only
    return one_line(exc, limit)
