"""The Python API for studios: submit ComfyUI workflows to the farm and get images back.

    from farm.client import Farm

    with Farm.local(models="models", output="out") as farm:          # embedded Ray
        job = farm.submit(workflow, {"3.seed": 42, "6.text": "a red fox"})
        print(job.result().files)
        results = farm.map(workflow, [{"3.seed": s} for s in range(100)])  # with a progress bar

    farm = Farm.connect("ray://head:10001")                           # a running farm

Overrides address inputs as "NODE_ID.INPUT". Validation happens here, in the caller's
process, before anything is queued: a bad workflow raises ValidationFailed with
ComfyUI's node_errors and the farm never sees it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from actors import cluster as ray_cluster
from farm.errors import UnknownJobError
from farm.futures import JobFailed, JobFuture, JobResult, Progress, error_of
from farm.models.compile_config import CompileConfig
from farm.models.store import ModelFolders
from farm.models.tier_config import TierConfig
from farm.nodes.spec import NodeContext
from farm.records.events import EventType, FarmEvent
from farm.records.history import HistoryItem
from farm.records.images import ImageRef
from farm.records.paths import FarmPaths
from farm.records.queue import QueueSnapshot
from farm.records.workers import WorkerStatus
from farm.scheduler.batch_size import BatchSizer
from farm.scheduler.jobs import Job
from farm.settings import Limits
from farm.workflow.prepare import (
    PreparedPrompt,
    ValidationFailed,
    load_json_file,
    prepare,
)

if TYPE_CHECKING:
    from farm.nodes.registry import NodeRegistry

__all__ = ["Farm", "JobFuture", "JobResult", "JobFailed", "Progress", "ValidationFailed"]

log = logging.getLogger(__name__)
WAIT_SLICE_S = 5.0  # one long-poll to the dispatcher; futures re-ask until done


class Farm:
    """A connection to one farm (its dispatcher, event hub and writer on Ray)."""

    def __init__(self, cluster: "ray_cluster.FarmCluster", paths: FarmPaths, owns_ray: bool = False,
                 limits: Limits | None = None):
        self.cluster = cluster
        self.paths = paths
        # the caps prompts are validated against (None: FARM_* variables, $FARM_CONFIG, defaults)
        self.node_ctx = NodeContext.for_paths(paths, limits)
        self._owns_ray = owns_ray
        self._pending: dict[str, JobFuture] = {}  # prompt_id -> future not yet resolved
        self._listeners: dict[str, JobFuture] = {}  # prompt_id -> future with progress callbacks
        self._lock = threading.Condition()
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._events: threading.Thread | None = None
        self._event_cursor: int | None = None

    @functools.cached_property
    def registry(self) -> NodeRegistry:
        """The nodes prompts are validated against, imported on first use: they bring torch,
        which a client that only watches the farm (a sweep's re-run with every render done)
        never needs."""
        from farm.nodes.registry import default_registry

        return default_registry()

    # -- starting -----------------------------------------------------------------------------

    @classmethod
    def local(cls, models: str | Path, output: str | Path | None = None, num_gpus: int | None = None,
              db: str | Path | None = None, *, root: str | Path = ".farm", num_workers: int | None = None,
              tiers: TierConfig = TierConfig(), max_batch: int = 8, max_attempts: int = 3,
              num_cpus: int | None = None, limits: Limits | None = None,
              compile: CompileConfig = CompileConfig(), pipeline_depth: int = 2, worker_gpus: float = 1.0,
              model_source: str | None = None, batch_sizer: BatchSizer | None = None) -> "Farm":
        """A farm in an embedded Ray on this machine: one worker per GPU; on a machine
        without GPUs, `num_gpus` logical ones (default 1) whose workers run on the CPU.
        If this process already runs Ray (and a farm), that one is used. `model_source`: a
        folder or fsspec URI a worker fetches model files from that `models` lacks.
        `batch_sizer`: jobs per call by architecture and size (default: the built-in caps
        under `max_batch`)."""
        root = Path(root).absolute()
        paths = FarmPaths.under(root, Path(models), Path(output) if output else None, model_source).create()
        owns = not ray_cluster.is_initialized()
        ray_cluster.init_local(num_gpus=num_gpus, num_cpus=num_cpus)
        config = ray_cluster.FarmConfig(paths=paths, db=Path(db).absolute() if db else root / "queue.sqlite",
                                        num_workers=num_workers, tiers=tiers, max_batch=max_batch,
                                        max_attempts=max_attempts, compile=compile,
                                        pipeline_depth=pipeline_depth, worker_gpus=worker_gpus,
                                        batch_sizer=batch_sizer)
        Path(config.db).parent.mkdir(parents=True, exist_ok=True)
        return cls(ray_cluster.FarmCluster.start(config), paths, owns_ray=owns, limits=limits)

    @classmethod
    def connect(cls, address: str = "auto", models: str | Path | None = None,
                limits: Limits | None = None) -> "Farm":
        """Join a cluster that runs a farm. Validation needs the models folder: by default
        the farm's own (right on the head or with a shared folder)."""
        ray_cluster.init_connect(address)
        found = ray_cluster.FarmCluster.find()
        paths: FarmPaths = found.call("paths")
        if models is not None:
            paths = dataclasses.replace(paths, models=Path(models))
        return cls(found, paths, limits=limits)

    def close(self, stop: bool | None = None) -> None:
        """Stop waiting for results. `stop` (default: when this Farm started Ray) also stops
        the farm's actors and Ray; the queue database stays for the next start."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._owns_ray if stop is None else stop:
            self.cluster.stop()
            ray_cluster.shutdown()

    def __enter__(self) -> "Farm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- submitting ----------------------------------------------------------------------------

    def prepare(self, workflow: object, overrides: dict | None = None, prompt_id: str | None = None) -> PreparedPrompt:
        """Validate and plan (raises ValidationFailed). A str or Path is read as a JSON file."""
        if isinstance(workflow, (str, Path)):
            workflow = load_json_file(Path(workflow))
        return prepare(workflow, self.registry, self.node_ctx, overrides, prompt_id=prompt_id)

    def submit(self, workflow: object, overrides: dict | None = None, *,
               on_progress: Callable[[Progress], None] | None = None, extra_pnginfo: dict | None = None,
               front: bool = False, prompt_id: str | None = None) -> JobFuture:
        return self.submit_many(workflow, [overrides or {}], on_progress=on_progress, extra_pnginfo=extra_pnginfo,
                                front=front, prompt_ids=[prompt_id] if prompt_id else None)[0]

    def submit_many(self, workflow: object, overrides: Sequence[dict], *,
                    on_progress: Callable[[Progress], None] | None = None, extra_pnginfo: dict | None = None,
                    front: bool = False, prompt_ids: Sequence[str] | None = None) -> list[JobFuture]:
        """Validate every variant first (nothing is queued if one is bad), then queue them
        all in one call."""
        if isinstance(workflow, (str, Path)):
            workflow = load_json_file(Path(workflow))
        ids = list(prompt_ids) if prompt_ids else [str(uuid.uuid4()) for _ in overrides]
        prepared = [self.prepare(workflow, o, pid) for o, pid in zip(overrides, ids)]
        return self.submit_prepared(prepared, on_progress=on_progress, extra_pnginfo=extra_pnginfo, front=front)

    def submit_prepared(self, prepared: Sequence[PreparedPrompt], *,
                        on_progress: Callable[[Progress], None] | None = None, extra_pnginfo: dict | None = None,
                        front: bool = False) -> list[JobFuture]:
        """Queue prompts already validated by `prepare` (the CLI validates before it starts
        Ray); each job carries its plan to the worker, so nothing is planned twice."""
        extra = {"extra_pnginfo": extra_pnginfo} if extra_pnginfo else {}
        folders = ModelFolders.for_paths(self.paths)
        jobs = [Job.from_prepared(p, folders, extra_data=extra, front=front) for p in prepared]
        futures = [JobFuture(self, job.job_id) for job in jobs]
        if on_progress is not None:
            for future in futures:
                future.on_progress(on_progress)  # before the submit: no early event is missed
        try:
            self.cluster.call("submit", jobs, timeout_s=120)
        except BaseException:
            with self._lock:
                for future in futures:
                    self._listeners.pop(future.prompt_id, None)
            raise
        with self._lock:  # only now: a wait for an id not yet stored would be told "unknown"
            for future in futures:
                self._pending[future.prompt_id] = future
            self._lock.notify_all()
        self._watch_results()
        return futures

    def map(self, workflow: object, overrides: Iterable[dict], progress: bool = True,
            timeout: float | None = None, raise_on_error: bool = True) -> list[JobResult]:
        """Render one variant per overrides dict; results in the same order. With progress
        a tqdm bar counts finished images."""
        futures = self.submit_many(workflow, list(overrides))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(futures), unit="job", desc="rendering")
            for future in futures:
                future.add_done_callback(lambda _f: bar.update(1))
        try:
            results = [f.outcome(timeout) for f in futures]
        finally:
            if bar is not None:
                bar.close()
        failed = [r for r in results if not r.ok]
        if failed and raise_on_error:
            raise JobFailed(failed[0])
        return results

    async def submit_async(self, workflow: object, overrides: dict | None = None, **kwargs) -> JobResult:
        """Submit and wait without blocking the event loop."""
        future = await asyncio.to_thread(self.submit, workflow, overrides, **kwargs)
        return await future

    async def map_async(self, workflow: object, overrides: Iterable[dict]) -> list[JobResult]:
        futures = await asyncio.to_thread(self.submit_many, workflow, list(overrides))
        return list(await asyncio.gather(*(asyncio.wrap_future(f._future) for f in futures)))

    # -- the farm ---------------------------------------------------------------------------------

    def status(self) -> "FarmStatus":
        return FarmStatus(self.cluster.call("queue"), self.cluster.call("workers"))

    def wait_for_workers(self, count: int | None = None, timeout: float = 300.0) -> list[WorkerStatus]:
        """Block until `count` workers (default: every one the farm started) report in."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.cluster.call("workers")
            alive = [w for w in workers if w.alive]
            if alive and len(alive) >= (count or len(workers)):
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(alive)} of {count or len(workers)} workers ready after {timeout:.0f} s")
            time.sleep(0.5)

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Drop weights from device memory (pinned copies stay) and/or cached node outputs
        on every worker."""
        self.cluster.call("free", unload_models, free_memory)

    def cancel(self, prompt_id: str) -> bool:
        return self.cluster.call("cancel", prompt_id)

    def interrupt(self, prompt_id: str | None = None) -> list[str]:
        return self.cluster.call("interrupt", prompt_id)

    def history(self, max_items: int | None = None) -> list[HistoryItem]:
        return self.cluster.call("history", max_items, -max_items if max_items else 0)

    def result_of(self, item: HistoryItem) -> JobResult:
        files = tuple(self.path_of(ref) for ref in item.images)
        return JobResult(item.prompt_id, item.status, item.outputs, item.images, files, item.timings, item.worker_id,
                         item.attempts, error_of(item))

    def path_of(self, image: ImageRef) -> Path:
        """Where an image is on the head (the farm's output or temp folder)."""
        folder = self.paths.output if image.type == "output" else self.paths.temp
        return folder / image.subfolder / image.filename

    # -- background threads -------------------------------------------------------------------------

    def _watch_results(self) -> None:
        with self._lock:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._results_loop, name="farm-results", daemon=True)
                self._watcher.start()

    def _results_loop(self) -> None:
        """One long-poll for every pending future at a time."""
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                ids = list(self._pending)
            try:
                finished = self.cluster.call("wait_finished", ids, WAIT_SLICE_S, timeout_s=WAIT_SLICE_S + 60)
            except Exception as exc:  # the farm is gone for good: every waiter learns why
                if self._closed or not ray_cluster.is_initialized():  # closed, then Ray shut down here
                    log.info("waiting for results ended: the farm was closed or Ray shut down")
                else:
                    log.error("waiting for results failed: %s", exc)
                with self._lock:
                    futures, self._pending = list(self._pending.values()), {}
                for future in futures:
                    future._fail(exc)
                continue
            for item in finished.items:
                with self._lock:
                    future = self._pending.pop(item.prompt_id, None)
                if future is not None:
                    future._resolve(self.result_of(item))
            for prompt_id in finished.unknown:
                with self._lock:
                    future = self._pending.pop(prompt_id, None)
                if future is not None:
                    future._fail(UnknownJobError(f"prompt {prompt_id} is no longer in the queue or history "
                                                 "(deleted from the queue?)"))

    def _listen(self, future: JobFuture) -> None:
        with self._lock:
            self._listeners[future.prompt_id] = future
        future.add_done_callback(lambda f: self._listeners.pop(f.prompt_id, None))
        self._watch_events()

    def _watch_events(self) -> None:
        with self._lock:
            if self._events is not None and self._events.is_alive():
                return
            self._event_cursor = self.cluster.events_head()  # from now: the submit comes after
            self._events = threading.Thread(target=self._events_loop, name="farm-events", daemon=True)
            self._events.start()

    def _events_loop(self) -> None:
        """All of the farm's events, matched to listening futures here: a filter at the hub
        would be the set of listeners as of the poll, and skip a newcomer's first events."""
        while not self._closed:
            try:
                page = self.cluster.poll_events(self._event_cursor, 2.0)
            except Exception as exc:
                if self._closed:
                    return
                log.warning("event stream: %s", exc)
                time.sleep(1.0)
                continue
            self._event_cursor = page.cursor
            for event in page.events:
                self._dispatch(event)

    def _dispatch(self, event: FarmEvent) -> None:
        if event.type is not EventType.PROGRESS or not isinstance(event.data, dict):
            return
        with self._lock:
            future = self._listeners.get(event.data.get("prompt_id"))
        if future is None:
            return
        progress = Progress(future.prompt_id, event.data.get("node"), int(event.data["value"]), int(event.data["max"]))
        for fn in future._progress:
            try:
                fn(progress)
            except Exception:
                log.exception("progress callback failed")


@dataclass(frozen=True)
class FarmStatus:
    queue: QueueSnapshot
    workers: list[WorkerStatus]


def render_file(workflow: Path, overrides: dict | None, models: Path, output: Path | None = None,
                num_gpus: int | None = None, root: Path = Path(".farm")) -> JobResult:
    """`farm run`: one workflow through the farm on an embedded Ray; raises ValidationFailed
    or JobFailed like the API does."""
    with Farm.local(models=models, output=output, num_gpus=num_gpus, root=root) as farm:
        return farm.submit(workflow, overrides).result()
