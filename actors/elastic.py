"""The farm's pool follows the cluster, and the cluster follows the queue.

Two checks the dispatcher makes from its tick:
- pool growth: a node that joins brings GPUs no worker holds; the farm starts one
  GpuWorker per such GPU (up to `max_workers`). A node that leaves takes its workers with
  it; their jobs are requeued where the dispatcher sees the worker's call fail, and a
  replacement worker waits (pending in Ray) until a GPU is free again.
- autoscaler requests: farm.scheduler.autoscale.ScalePolicy turns the queue's backlog
  into a GPU count, sent with `ray.autoscaler.sdk.request_resources` whenever it changes
  (an empty request withdraws it). On a cluster without an autoscaler the request is only
  stored (internal KV key "autoscaler_resource_request"): harmless, and readable back.
- scale-down: while autoscaling, the pool grows only to the wanted count, and once that
  count has stayed below the live workers for `scale_down_delay_s`, idle workers above it
  are retired (farm.scheduler.autoscale.RetirePolicy): killed, so that their GPUs are free
  and the autoscaler can end the node. A worker with a running or reserved batch is never
  picked; it goes on a later tick once it is idle.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import ray

from farm.scheduler.autoscale import (
    RetirePolicy,
    ScaleKnobs,
    ScalePolicy,
    fleet_backlog_s,
    fleet_busy,
    retirable,
)
from farm.scheduler.fleet import Fleet

log = logging.getLogger(__name__)

POOL_CHECK_S = 5.0  # how often the cluster's GPU count is read (a GCS call)
REQUEST_KV_KEY = "autoscaler_resource_request"  # where Ray stores the request (tests read it)


def workers_per_host() -> int:
    """GPUs of the largest live node: a CPU worker divides its host's cores by this."""
    return max(1, max((int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["Alive"]), default=1))


def send_request(gpus: int) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * gpus)


class ElasticPool:
    """Pool size and autoscaler request of one dispatcher."""

    def __init__(self, num_workers: int | None, max_workers: int | None, knobs: ScaleKnobs | None,
                 clock: Callable[[], float] = time.time):
        # A fixed num_workers without max_workers keeps the pool at that size, as before.
        self.max_workers = max_workers if max_workers is not None else num_workers
        self.clock = clock
        self.scale: ScalePolicy | None = None
        self.retire: RetirePolicy | None = None
        self.requested: int | None = None  # GPUs last sent to the autoscaler; None: nothing sent
        self._next_check = 0.0
        self.configure(knobs)

    def missing_workers(self, workers: int) -> int:
        """Workers to start now: GPUs of the cluster that no worker of the farm holds."""
        now = time.monotonic()
        if now < self._next_check:
            return 0
        self._next_check = now + POOL_CHECK_S
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cap = gpus if self.max_workers is None else min(gpus, self.max_workers)
        if self.scale is not None:  # autoscaling: as many as the queue wants (it rises at once)
            cap = min(cap, self.scale.wanted)
        return max(0, cap - workers)

    def to_retire(self, fleet: Fleet, live: list[str]) -> list[str]:
        """Idle workers to stop now (none unless autoscaling)."""
        if self.scale is None or self.retire is None:
            return []
        idle = [w for w in retirable(fleet) if w in set(live)]
        return self.retire.pick(self.scale.wanted, len(live), idle)

    def update_request(self, fleet: Fleet) -> None:
        """Ask the autoscaler for what the backlog wants, when that changed."""
        if self.scale is None:
            return
        gpus = self.scale.update(fleet_backlog_s(fleet, self.clock()), fleet_busy(fleet))
        if gpus != self.requested:
            self._send(gpus)

    def configure(self, knobs: ScaleKnobs | None) -> None:
        """New knobs (None: stop asking, and withdraw what was asked)."""
        if knobs is None:
            self.scale = self.retire = None
            if self.requested:
                self._send(0)
            return
        self.scale = ScalePolicy(knobs, self.clock)
        self.retire = RetirePolicy(knobs, self.clock)
        if self.requested is not None:  # a lower count waits for the delay, as any fall does
            self.scale.requested = max(knobs.min_gpus, min(knobs.max_gpus, self.requested))

    def wanted(self) -> int | None:
        return None if self.scale is None else self.scale.wanted

    def _send(self, gpus: int) -> None:
        try:
            send_request(gpus)
            self.requested = gpus
            log.info("asked the autoscaler for %d GPUs", gpus)
        except Exception as exc:  # the GCS is briefly away: ask again next tick
            log.warning("could not ask the autoscaler for %d GPUs: %s", gpus, exc)
