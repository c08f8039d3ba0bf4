"""How many GPUs the farm should ask the cluster autoscaler for, from its queue.

The backlog is counted in GPU seconds (the jobs' own estimates: est_run_s / est_extra_s,
batched as the queues batch them, plus what is left of every running batch). The farm
wants enough GPUs that each has at most `target_backlog_s` of it:

    wanted = clamp(max(ceil(backlog_s / target_backlog_s), busy_gpus), min_gpus, max_gpus)

busy_gpus (workers in the middle of a batch) keeps a farm that keeps up from giving back
the GPUs it keeps up with: short jobs leave little backlog, and without that floor the
count would fall, the queue grow, and GPUs be booted again (the simulator shows the churn).

A rise is asked for at once (a queue that grows is what autoscaling is for); a fall waits
until the wanted count has stayed lower for `scale_down_delay_s`, then drops to the
highest count wanted during that wait: a burst that pauses for a few seconds does not
give its GPUs back only to ask for them again. Plain Python with an injected clock: the
Ray side (actors/elastic.py) calls `ray.autoscaler.sdk.request_resources` with the
answer, the simulator (simulate_autoscale.py) starts and stops simulated GPUs with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from farm.errors import FarmError
from farm.scheduler.fleet import Fleet


class ScaleKnobsError(FarmError):
    """An autoscaling setting that cannot work (a negative count, a zero target)."""


@dataclass(frozen=True)
class ScaleKnobs:
    max_gpus: int = 8  # never ask for more (the bill's ceiling)
    target_backlog_s: float = 60.0  # GPU seconds of queued work each GPU may carry
    scale_down_delay_s: float = 300.0  # a lower count must hold this long before it is asked for
    min_gpus: int = 0  # always keep asking for at least this many

    def __post_init__(self) -> None:
        if self.max_gpus < 1:
            raise ScaleKnobsError(f"max_gpus is {self.max_gpus}; it must be at least 1")
        if not 0 <= self.min_gpus <= self.max_gpus:
            raise ScaleKnobsError(f"min_gpus is {self.min_gpus}; it must be between 0 and max_gpus "
                                  f"({self.max_gpus})")
        if not self.target_backlog_s > 0:
            raise ScaleKnobsError(f"target_backlog_s is {self.target_backlog_s}; it must be more than 0 "
                                  f"seconds of queued work per GPU")
        if not self.scale_down_delay_s >= 0:
            raise ScaleKnobsError(f"scale_down_delay_s is {self.scale_down_delay_s}; it must be 0 or more")


def fleet_busy(fleet: Fleet) -> int:
    """Workers running a batch now."""
    return sum(1 for view in fleet.workers.values() if view.running)


def fleet_backlog_s(fleet: Fleet, now_s: float) -> float:
    """GPU seconds of work the farm holds: every queue's batched drain time plus the rest
    of every running batch. O(workers): asked once per tick, not per job."""
    total = fleet.pool.total_work_s
    for view in fleet.workers.values():
        total += view.queue.total_work_s
        if view.running:
            total += max(0.0, view.busy_until_s - now_s)
    return total


class ScalePolicy:
    """The GPU count to ask for, updated from the backlog whenever the caller looks."""

    def __init__(self, knobs: ScaleKnobs, clock: Callable[[], float]):
        self.knobs = knobs
        self.clock = clock
        self.requested = knobs.min_gpus  # what the autoscaler was last told
        self.wanted = knobs.min_gpus  # what the backlog asks for right now
        self._lower_since: float | None = None  # when wanted fell below requested
        self._lower_peak = 0  # highest wanted since then

    def wanted_for(self, backlog_s: float, busy_gpus: int = 0) -> int:
        k = self.knobs
        by_backlog = math.ceil(max(0.0, backlog_s) / k.target_backlog_s - 1e-9)
        return max(k.min_gpus, min(k.max_gpus, max(by_backlog, busy_gpus)))

    def update(self, backlog_s: float, busy_gpus: int = 0) -> int:
        """The count to request now, given the backlog (GPU seconds) and the GPUs at work."""
        now = self.clock()
        wanted = self.wanted = self.wanted_for(backlog_s, busy_gpus)
        if wanted >= self.requested:
            self.requested = wanted
            self._lower_since = None
            return self.requested
        if self._lower_since is None:
            self._lower_since, self._lower_peak = now, wanted
        self._lower_peak = max(self._lower_peak, wanted)
        if now - self._lower_since >= self.knobs.scale_down_delay_s:
            self.requested = self._lower_peak
            self._lower_since = None if wanted >= self.requested else now
            self._lower_peak = wanted
        return self.requested


def retirable(fleet: Fleet) -> list[str]:
    """Workers that may be stopped now: idle (asked for work, got none), nothing running,
    nothing reserved for them; the one idle longest first."""
    return [view.worker_id for view in fleet.idle_workers() if not view.running and not len(view.queue)]


class RetirePolicy:
    """Which idle workers to stop so that their nodes can be given back: once the wanted
    GPU count has stayed below the live workers for `scale_down_delay_s`, the idle ones
    above the highest count wanted during that wait. Ray's autoscaler removes a node only
    when nothing runs on it, and a GpuWorker holds its GPU as long as it lives."""

    def __init__(self, knobs: ScaleKnobs, clock: Callable[[], float]):
        self.knobs = knobs
        self.clock = clock
        self._below_since: float | None = None  # when wanted fell below the live workers
        self._peak = 0  # highest wanted since then

    def pick(self, wanted: int, live: int, idle: list[str]) -> list[str]:
        """Worker ids to retire now (from `idle`, in its order), given the count wanted now,
        the live workers, and those of them that are idle."""
        now = self.clock()
        wanted = max(wanted, self.knobs.min_gpus)
        if wanted >= live:
            self._below_since = None
            return []
        if self._below_since is None:
            self._below_since, self._peak = now, wanted
        self._peak = max(self._peak, wanted)
        if now - self._below_since < self.knobs.scale_down_delay_s:
            return []
        # the wait is over; what still stands above the peak goes, a busy worker when it is idle
        return idle[:max(0, live - self._peak)]
