"""Replica planning: how many workers should hold each checkpoint, and which.

Demand is measured per checkpoint as GPU seconds submitted per second (an exponential
moving average). A checkpoint's share of the fleet is its demand divided by the target
utilisation (the fleet's actual utilisation when that is higher: under overload every
checkpoint gets its proportional part of the workers). It gets ceil(share) replicas,
rounding down a fraction below `slack` so that noise does not flip a count. Replicas are
sticky: workers keep what they hold while they are not overloaded, and only missing
replicas are placed, on the least loaded workers with VRAM room. A plan made from
unchanged demand keeps the current placement and costs no loads.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from farm.scheduler.fleet import Fleet, WorkerView


@dataclass(frozen=True)
class ReplicaPlan:
    made_s: float  # dispatcher-clock time it was computed
    replicas: dict[str, int] = field(default_factory=dict)  # checkpoint -> holders wanted
    assigned: dict[str, frozenset[str]] = field(default_factory=dict)  # worker_id -> checkpoints

    def wants(self, worker_id: str) -> frozenset[str]:
        return self.assigned.get(worker_id, frozenset())


def vram_budget(view: WorkerView) -> int:
    """VRAM for weights on this worker, as its last report implies."""
    return view.residency.gpu_free_bytes + sum(size for _, size in view.residency.evict_order)


def plan_replicas(demand: dict[str, float], sizes: dict[str, int], fleet: Fleet, now_s: float,
                  target_util: float = 0.85, slack: float = 0.25,
                  keep_load: float = 1.25) -> ReplicaPlan:
    """Place ceil(share) replicas of every checkpoint with demand (see the module docstring).

    Two passes, biggest share first in each: (1) workers that hold a checkpoint keep it
    while their planned load stays under `keep_load` (1.0 = fully busy); (2) missing
    replicas go to the least loaded workers with VRAM room.
    """
    workers = list(fleet.workers.values())
    total = sum(demand.values())
    if not workers or total <= 0:
        return ReplicaPlan(now_s)
    scale = max(total / len(workers), target_util)
    load = {w.worker_id: 0.0 for w in workers}  # worker -> planned busy share
    room = {w.worker_id: vram_budget(w) for w in workers}  # worker -> VRAM bytes left
    assigned: dict[str, set[str]] = {w.worker_id: set() for w in workers}
    order = sorted((c for c in demand if demand[c] > 0), key=lambda c: (-demand[c], c))
    wanted = {c: min(len(workers), max(1, math.ceil(demand[c] / scale - slack))) for c in order}
    chosen: dict[str, list[str]] = {c: [] for c in order}

    def assign(checkpoint: str, worker_ids: list[str], replicas: int) -> None:
        for worker_id in worker_ids:
            load[worker_id] += demand[checkpoint] / scale / replicas
            room[worker_id] -= sizes.get(checkpoint, 0)
            assigned[worker_id].add(checkpoint)
            chosen[checkpoint].append(worker_id)

    for checkpoint in order:  # 1. keep what is loaded (more copies than wanted cost nothing)
        per_replica = demand[checkpoint] / scale / wanted[checkpoint]
        kept = [w for w in fleet.holders(checkpoint) if load[w] + per_replica <= keep_load]
        assign(checkpoint, kept, max(wanted[checkpoint], len(kept)))
    for checkpoint in order:  # 2. load what is missing where there is time and room
        size = sizes.get(checkpoint, 0)
        missing = wanted[checkpoint] - len(chosen[checkpoint])
        free = ((load[w], w) for w in load if w not in chosen[checkpoint] and room[w] >= size)
        best = heapq.nsmallest(missing, free) if missing > 0 else []
        assign(checkpoint, [w for _, w in best], wanted[checkpoint])
    return ReplicaPlan(now_s, {c: len(chosen[c]) for c in order},
                       {w: frozenset(c) for w, c in assigned.items() if c})
