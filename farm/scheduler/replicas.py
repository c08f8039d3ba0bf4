"""Replica planning: how many workers should hold each checkpoint, and which.

Demand is measured per checkpoint as GPU seconds submitted per second (an exponential
moving average). A checkpoint's share of the fleet is its demand divided by the target
utilisation (the fleet's actual utilisation when that is higher: under overload every
checkpoint gets its proportional part of the workers). It gets ceil(share) replicas,
rounding down a fraction below `slack` so that noise does not flip a count. Replicas are
sticky: workers keep what they hold, and only missing replicas are placed, on the least
loaded workers with VRAM room. A plan made from unchanged demand keeps the current
placement and costs no loads.

Workers that share a checkpoint pull from the same queue, so within such a linked group
the work evens out by itself; between groups it cannot. When one group is busier than
another, the plan adds a bridging replica of one of the busy group's checkpoints to the
idle group.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from farm.scheduler.fleet import Fleet, WorkerView


class DemandRate:
    """Exponentially weighted rate of submitted GPU work for one checkpoint (seconds of
    work per second), bias-corrected so that the first minutes are not read as quiet."""

    def __init__(self, now_s: float):
        self.first_s = now_s  # first submission seen
        self.last_s = now_s  # last update
        self.level = 0.0  # EMA of work per second, not yet bias-corrected

    def add(self, work_s: float, now_s: float, window_s: float) -> None:
        self.level = self.level * math.exp((self.last_s - now_s) / window_s) + work_s / window_s
        self.last_s = now_s

    def rate(self, now_s: float, window_s: float, warmup_s: float) -> float:
        decay = math.exp((self.last_s - now_s) / window_s)
        seen = max(now_s - self.first_s, warmup_s, 1.0)  # a rate needs some history
        return self.level * decay / (1.0 - math.exp(-seen / window_s))


@dataclass(frozen=True)
class ReplicaPlan:
    """Which workers should hold which checkpoints; read by FarmPolicy, never enforced by
    unloading (a worker evicts only when it needs room, and then what the plan wants last)."""
    made_s: float  # dispatcher-clock time it was computed
    placed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # checkpoint -> worker_ids
    assigned: dict[str, frozenset[str]] = field(default_factory=dict)  # worker_id -> checkpoints

    @property
    def replicas(self) -> dict[str, int]:
        """checkpoint -> how many workers should hold it."""
        return {c: len(workers) for c, workers in self.placed.items()}

    def wants(self, worker_id: str) -> frozenset[str]:
        return self.assigned.get(worker_id, frozenset())


def vram_budget(view: WorkerView) -> int:
    """VRAM for weights on this worker, as its last report implies."""
    return view.residency.gpu_free_bytes + sum(size for _, size in view.residency.evict_order)


def plan_replicas(demand: dict[str, float], sizes: dict[str, int], fleet: Fleet, now_s: float,
                  target_util: float = 0.85, slack: float = 0.25, balance_gap: float = 0.3,
                  max_bridges: int = 1) -> ReplicaPlan:
    """Place ceil(share) replicas of every checkpoint with demand (see the module docstring).

    Biggest share first, so that VRAM goes to the hot checkpoints: (1) workers that hold
    the checkpoint keep it (VRAM permitting); (2) missing replicas go to the least loaded
    workers with VRAM room. Then (3) up to `max_bridges` extra replicas join groups whose
    loads (busy shares, 1.0 = fully busy) differ by more than `balance_gap`.
    """
    workers = list(fleet.workers)
    total = sum(demand.values())
    if not workers or total <= 0:
        return ReplicaPlan(now_s)
    scale = max(total / len(workers), target_util)
    share = {c: d / scale for c, d in demand.items() if d > 0}  # checkpoint -> workers' worth
    wanted = {c: min(len(workers), max(1, math.ceil(x - slack))) for c, x in share.items()}
    packing = _Packing(share, sizes, {w: vram_budget(fleet.workers[w]) for w in workers})
    order = sorted(share, key=lambda c: (-share[c], c))
    for checkpoint in order:  # busiest first: VRAM goes to the hot checkpoints
        # 1. Keep what is loaded (more copies than wanted cost nothing).
        kept = [w for w in fleet.holders(checkpoint) if packing.fits(checkpoint, w)]
        for worker_id in kept:
            packing.assign(checkpoint, worker_id, max(wanted[checkpoint], len(kept)))
        # 2. Load what is missing where there is time and room.
        missing = wanted[checkpoint] - len(packing.holders[checkpoint])
        free = ((packing.load[w], w) for w in workers if packing.fits(checkpoint, w))
        for _, worker_id in heapq.nsmallest(missing, free) if missing > 0 else ():
            packing.assign(checkpoint, worker_id, wanted[checkpoint])
    for _ in range(max_bridges):  # 3. Let the pull share work between unequal groups.
        if not packing.bridge(balance_gap):
            break
    return ReplicaPlan(now_s, {c: tuple(ws) for c, ws in packing.holders.items()},
                       {w: frozenset(cs) for w, cs in packing.assigned.items() if cs})


class _Packing:
    """Replicas placed so far, with each worker's planned load and VRAM left."""

    def __init__(self, share: dict[str, float], sizes: dict[str, int], room: dict[str, int]):
        self.share = share  # checkpoint -> workers' worth of demand
        self.sizes = sizes  # checkpoint -> bytes
        self.room = room  # worker -> VRAM bytes left
        self.load = {w: 0.0 for w in room}  # worker -> planned busy share (even split)
        self.assigned: dict[str, set[str]] = {w: set() for w in room}  # worker -> checkpoints
        self.holders: dict[str, list[str]] = {c: [] for c in share}  # checkpoint -> workers

    def fits(self, checkpoint: str, worker_id: str) -> bool:
        return (checkpoint not in self.assigned[worker_id]
                and self.room[worker_id] >= self.sizes.get(checkpoint, 0))

    def assign(self, checkpoint: str, worker_id: str, replicas: int) -> None:
        self.load[worker_id] += self.share[checkpoint] / replicas
        self.room[worker_id] -= self.sizes.get(checkpoint, 0)
        self.assigned[worker_id].add(checkpoint)
        self.holders[checkpoint].append(worker_id)

    def groups(self) -> list[tuple[float, list[str], list[str]]]:
        """Workers linked by a shared checkpoint pull from the same queues, so their work
        evens out: (load per worker, workers, checkpoints) of each linked group."""
        parent = {w: w for w in self.assigned}

        def root(w: str) -> str:
            while parent[w] != w:
                parent[w] = parent[parent[w]]
                w = parent[w]
            return w

        for workers in self.holders.values():
            for other in workers[1:]:
                parent[root(other)] = root(workers[0])
        members: dict[str, list[str]] = {}
        for w in self.assigned:
            members.setdefault(root(w), []).append(w)
        groups = []
        for workers in members.values():
            checkpoints = sorted({c for w in workers for c in self.assigned[w]})
            groups.append((sum(self.share[c] for c in checkpoints) / len(workers), workers, checkpoints))
        return groups

    def bridge(self, balance_gap: float) -> bool:
        """Add one replica from the busiest group onto the least loaded worker of the
        idlest group, if their loads differ by more than balance_gap."""
        groups = self.groups()
        heavy, light = max(groups), min(groups)
        gap = heavy[0] - light[0]
        if gap <= balance_gap:
            return False
        # The bridge must carry enough work to even the two groups out.
        need = gap * len(heavy[1]) * len(light[1]) / (len(heavy[1]) + len(light[1]))
        for checkpoint in sorted(heavy[2], key=lambda c: (-min(self.share[c], need),
                                                          self.sizes.get(c, 0), c)):
            targets = [w for w in light[1] if self.fits(checkpoint, w)]
            if targets:
                worker_id = min(targets, key=lambda w: (self.load[w], w))
                self.assign(checkpoint, worker_id, len(self.holders[checkpoint]) + 1)
                return True
        return False
