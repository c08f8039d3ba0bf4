"""The farm's one door to Ray: start or join a cluster, create or find the farm's actors,
and call them. Everything else in farm/ stays free of Ray (client.py and the HTTP
backend call this module); the actor classes live in the top-level `actors` package.

The farm's actors are named and detached in the "renderfarm" namespace: a second
process joining the cluster finds the same dispatcher, and workers outlive a dispatcher
restart (the restarted one finds them by name).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

from actors import ACTOR_NAMESPACE, DISPATCHER_NAME, EVENT_HUB_NAME, OUTPUT_WRITER_NAME
from farm.errors import FarmError, FarmUnavailable, one_line
from farm.models.compile_config import CompileConfig
from farm.models.tier_config import TierConfig
from farm.records.paths import FarmPaths
from farm.scheduler.autoscale import ScaleKnobs
from farm.scheduler.batch_size import BatchSizer
from farm.scheduler.costs import DEFAULT_FETCH_BYTES_PER_S

log = logging.getLogger(__name__)

# Ray restarts a dead dispatcher (it reloads the queue from SQLite); a call that hits the
# gap is retried for this long before the caller sees an error.
DISPATCHER_RETRY_S = 60.0


@dataclass(frozen=True)
class FarmConfig:
    """How a farm is set up. The head's paths: the dispatcher's database, the models
    folder workers load from (a shared folder on a real cluster), the output folder the
    writer fills."""

    paths: FarmPaths
    db: Path  # the durable queue (SQLite)
    num_workers: int | None = None  # None: one per GPU of the cluster
    tiers: TierConfig = field(default_factory=TierConfig)
    max_attempts: int = 3  # dispatches of one job before it fails (a worker died under it each time)
    max_batch: int = 8  # prompts per engine call, at most
    batch_sizer: BatchSizer | None = None  # prompts per call by architecture, size and free VRAM
    # (None: BatchSizer's defaults), never above max_batch
    dtype: str | None = None  # "fp16" | "bf16" | "fp32"; None: the device's default
    dispatcher_options: dict[str, Any] = field(default_factory=dict)  # extra DispatcherCore settings
    max_workers: int | None = None  # cap as nodes join (None: num_workers if set, else every GPU)
    autoscale: ScaleKnobs | None = None  # ask the cluster autoscaler for GPUs from the queue; None: never
    compile: CompileConfig = field(default_factory=CompileConfig)  # torch.compile of the UNet (on for CUDA)
    pipeline_depth: int = 2  # batches a worker holds at once: one sampling, one decoding or waiting
    worker_gpus: float = 1.0  # GPUs per worker; 0.5 puts two workers on each GPU (Ray's fractional GPUs)
    # bandwidth from paths.model_source (where a node fetches a file it lacks): placement adds
    # size / this to the load cost of such a file
    fetch_bytes_per_s: float = DEFAULT_FETCH_BYTES_PER_S


def init_local(num_gpus: int | None = None, num_cpus: int | None = None) -> None:
    """Start an embedded Ray for this process. Without GPUs, `num_gpus` logical ones (1 by
    default) so that workers exist and run on the CPU."""
    if ray.is_initialized():
        return
    if num_gpus is None:
        num_gpus = _local_gpu_count() or 1
    # address="local": always a new cluster of our own, never one named by $RAY_ADDRESS or a
    # stale /tmp/ray/ray_current_cluster (joining a stranger's cluster with num_gpus fails)
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, namespace=ACTOR_NAMESPACE,
             include_dashboard=False, log_to_driver=False, configure_logging=False)


def init_connect(address: str = "auto") -> None:
    """Join a running cluster ("auto": the one on this machine, or $RAY_ADDRESS)."""
    if not ray.is_initialized():
        _token_auth_like_ray_start()
        try:
            ray.init(address=address, namespace=ACTOR_NAMESPACE, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise FarmUnavailable(f"no Ray cluster answers at {address!r} ({exc}): start one with "
                                  "`ray start --head`, or check the address and RAY_AUTH_MODE") from None


AUTH_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def _token_auth_like_ray_start() -> None:
    """`ray start --head` turns token auth on when a token exists (~/.ray/auth_token, which
    any local ray.init() writes, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) and RAY_AUTH_MODE is
    unset; a process that only connects does not, and is refused ("Authentication token is
    missing or incorrect"). Do what `ray start` does, so farm start/serve/stop and jobs
    reach such a head; an explicit RAY_AUTH_MODE wins."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or AUTH_TOKEN_FILE.exists():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import: re-read it (what ray start does too)
            from ray._raylet import Config

            Config.initialize("")
        except Exception as exc:  # an older Ray without token auth: nothing to turn on
            log.debug("token auth: %s", exc)


def shutdown() -> None:
    ray.shutdown()


def is_initialized() -> bool:
    return ray.is_initialized()


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _head_affinity():
    """Pin to the node this process runs on (the head, for `farm serve` and Farm.local)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _named(name: str):
    try:
        return ray.get_actor(name, namespace=ACTOR_NAMESPACE)
    except ValueError:
        return None


def _raise_farm_error(exc: BaseException):
    """A FarmError the dispatcher raised (a duplicate or unknown prompt, a locked queue)
    reaches the caller as itself: its one-line message, not Ray's remote traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FarmError):
        raise cause from None
    raise exc


def _raise_if_it_cannot_start(exc: BaseException) -> None:
    """A dispatcher whose __init__ raised (its queue database is locked or no database)
    fails the same way on every restart: say why now instead of retrying for a minute."""
    if getattr(exc, "actor_init_failed", False):
        raise FarmUnavailable(f"the dispatcher could not start: {one_line(exc)}") from None


class FarmCluster:
    """Handles to one farm's actors, and blocking or awaitable calls to them."""

    def __init__(self, dispatcher, hub, writer):
        self.dispatcher, self.hub, self.writer = dispatcher, hub, writer

    # -- creating / finding ------------------------------------------------------------------

    @classmethod
    def start(cls, config: FarmConfig) -> "FarmCluster":
        """Create the farm's actors on this node (the head), or find them if this cluster
        already runs a farm."""
        from actors.dispatcher import Dispatcher
        from actors.event_hub import EventHub
        from actors.output_writer import OutputWriter

        common = dict(namespace=ACTOR_NAMESPACE, lifetime="detached", get_if_exists=True,
                      scheduling_strategy=_head_affinity())
        hub = EventHub.options(name=EVENT_HUB_NAME, **common).remote()
        writer = OutputWriter.options(name=OUTPUT_WRITER_NAME, **common).remote(
            str(config.paths.output), str(config.paths.temp))
        # max_restarts: Ray brings a dead dispatcher back with the same arguments; it reloads
        # the queue from the database and finds its workers by name
        dispatcher = Dispatcher.options(name=DISPATCHER_NAME, max_restarts=-1, **common).remote(config)
        cluster = cls(dispatcher, hub, writer)
        cluster.call("ready", timeout_s=300)
        return cluster

    @classmethod
    def find(cls) -> "FarmCluster":
        handles = [_named(n) for n in (DISPATCHER_NAME, EVENT_HUB_NAME, OUTPUT_WRITER_NAME)]
        if any(h is None for h in handles):
            raise FarmUnavailable("this Ray cluster runs no farm: start one on the head with "
                                  "`farm start --address auto --models DIR --output DIR` (or `farm serve "
                                  "--address auto`; Farm.local(...) in one process)")
        return cls(*handles)

    def stop(self) -> None:
        """Kill the farm's actors (workers included); the database stays."""
        try:
            self.call("stop_workers", timeout_s=60)
        except Exception as exc:  # already gone: nothing to stop
            log.debug("stopping workers: %s", exc)
        for handle in (self.dispatcher, self.writer, self.hub):
            try:
                ray.kill(handle)
            except Exception:
                pass

    # -- calls ----------------------------------------------------------------------------------

    def call(self, method: str, *args, timeout_s: float | None = None, **kwargs):
        """dispatcher.<method>(...) and wait. While Ray restarts a dead dispatcher the call
        is retried (every method is safe to repeat: submit refuses a duplicate id)."""
        deadline = time.monotonic() + DISPATCHER_RETRY_S
        while True:
            try:
                ref = getattr(self.dispatcher, method).remote(*args, **kwargs)
                return ray.get(ref, timeout=timeout_s)
            except GetTimeoutError:
                raise TimeoutError(f"the dispatcher did not answer {method} within {timeout_s} s") from None
            except RayTaskError as exc:
                _raise_farm_error(exc)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                _raise_if_it_cannot_start(exc)
                if time.monotonic() > deadline:
                    raise FarmUnavailable(f"the dispatcher is gone and did not come back: {one_line(exc)}") from exc
                time.sleep(0.5)
                self._refresh_dispatcher()

    async def call_async(self, method: str, *args, **kwargs):
        import asyncio

        deadline = time.monotonic() + DISPATCHER_RETRY_S
        while True:
            try:
                return await getattr(self.dispatcher, method).remote(*args, **kwargs)
            except RayTaskError as exc:
                _raise_farm_error(exc)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                _raise_if_it_cannot_start(exc)
                if time.monotonic() > deadline:
                    raise FarmUnavailable(f"the dispatcher is gone and did not come back: {one_line(exc)}") from exc
                await asyncio.sleep(0.5)
                self._refresh_dispatcher()

    def _refresh_dispatcher(self) -> None:
        handle = _named(DISPATCHER_NAME)
        if handle is not None:
            self.dispatcher = handle

    def poll_events(self, cursor: int, timeout_s: float = 5.0, prompt_ids: list[str] | None = None):
        """actors.event_hub.EventPage of events after `cursor` (-1: from now on)."""
        return ray.get(self.hub.poll.remote(cursor, timeout_s, 1000, prompt_ids), timeout=timeout_s + 30)

    async def poll_events_async(self, cursor: int, timeout_s: float = 5.0, prompt_ids: list[str] | None = None):
        return await self.hub.poll.remote(cursor, timeout_s, 1000, prompt_ids)

    def events_head(self) -> int:
        return ray.get(self.hub.head.remote())

    # -- for tests and operators --------------------------------------------------------------

    def kill_dispatcher(self, restart: bool = True) -> None:
        """Kill the dispatcher process; with `restart` Ray starts it again (it resumes from
        the database), without it the farm has no dispatcher until `start` is called again."""
        ray.kill(self.dispatcher, no_restart=not restart)

    def worker_handle(self, worker_id: str):
        return _named(worker_id)
