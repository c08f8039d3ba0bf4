"""`farm simulate --autoscale`: the same trace on a fleet that follows the queue.

The fleet starts with `min_gpus` GPUs. The farm's ScalePolicy (autoscale.py) reads the
backlog at every event and every `tick_s`; when it asks for more GPUs, each new one
starts serving `start_delay_s` later (a cloud node booting, Ray joining, torch
importing) and is paid for from the moment it was asked for. When it asks for fewer, GPUs
still booting are cancelled first, then idle GPUs are given back; a busy one goes when
its batch ends. After the last job, GPUs are still paid for until the policy gives them
back (the scale-down delay): the autoscaled cost counts that tail, the fixed fleet is
paid for the makespan only. Cost is in GPU-hours; the figures compared are cost and the
p99 wait, against the fixed fleet of `--workers` GPUs running the same placement policy.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass

from farm.records.residency import GB, Residency
from farm.scheduler.autoscale import (
    ScaleKnobs,
    ScalePolicy,
    fleet_backlog_s,
    fleet_busy,
)
from farm.scheduler.placement import PlacementPolicy
from farm.scheduler.simulate import PolicyResult, RunStats, Simulation, _percentile
from farm.scheduler.trace import TraceJob, TraceSpec


@dataclass(frozen=True)
class AutoscaleSpec:
    knobs: ScaleKnobs
    start_delay_s: float = 90.0  # from the request to a GPU that takes work
    tick_s: float = 5.0  # how often the policy is asked between events (the dispatcher: 0.5 s)


@dataclass(frozen=True)
class FleetCost:
    """One fleet's bill and service: the JSON object per fleet of `--autoscale --json`."""
    gpu_hours: float  # GPU time paid for, booting included
    peak_gpus: int  # most GPUs paid for at once
    makespan_s: float
    gpu_busy: float  # rendering seconds / paid GPU seconds
    p50_wait_s: float
    p99_wait_s: float


def fixed_cost(workers: int, result: PolicyResult) -> FleetCost:
    return FleetCost(round(workers * result.makespan_s / 3600, 4), workers, result.makespan_s, result.gpu_busy,
                     result.p50_wait_s, result.p99_wait_s)


class AutoscaledSimulation(Simulation):
    """Simulation whose workers come and go as the ScalePolicy asks."""

    def __init__(self, spec: TraceSpec, trace: list[TraceJob], policy: PlacementPolicy, scaling: AutoscaleSpec):
        super().__init__(spec, trace, policy)
        self.scaling = scaling
        self.scale = ScalePolicy(scaling.knobs, self.clock)
        self.residency = {}
        self.booting: dict[str, float] = {}  # worker_id -> when it was asked for (paid from then)
        self.boots: list[tuple[float, str]] = []  # heap of (ready time, worker_id)
        self.paid_since: dict[str, float] = {}  # serving worker_id -> when it was asked for
        self.paid_s = 0.0  # GPU seconds of workers already given back
        self.peak = 0
        self._next_id = 0

    # --- the fleet ------------------------------------------------------------------------

    def paid_count(self) -> int:
        return len(self.booting) + len(self.paid_since)

    def want(self) -> int:
        return self.scale.update(fleet_backlog_s(self.core.fleet, self.clock.now_s), fleet_busy(self.core.fleet))

    def rescale(self) -> None:
        want = self.want()
        while self.paid_count() < want:
            worker_id = f"a{self._next_id:05d}"
            self._next_id += 1
            self.booting[worker_id] = self.clock.now_s
            heapq.heappush(self.boots, (self.clock.now_s + self.scaling.start_delay_s, worker_id))
        self.peak = max(self.peak, self.paid_count())
        for worker_id in sorted(self.booting, key=self.booting.get, reverse=True):  # newest boots first
            if self.paid_count() <= want:
                return
            self.paid_s += self.clock.now_s - self.booting.pop(worker_id)
        for worker_id in [w for w in self.paid_since if w not in self.running]:
            if self.paid_count() <= want:
                return
            self.retire(worker_id)

    def boot(self, worker_id: str) -> None:
        if worker_id not in self.booting:
            return  # cancelled while it booted
        self.paid_since[worker_id] = self.booting.pop(worker_id)
        s = self.spec
        self.residency[worker_id] = Residency(int(s.gpu_gb * GB), int(s.pinned_gb * GB), int(s.disk_gb * GB))
        self.core.register_worker(worker_id)
        self.dispatch(worker_id)

    def retire(self, worker_id: str) -> None:
        self.core.requeue_worker(worker_id)  # idle: nothing runs, nothing is reserved for it
        self.paid_s += self.clock.now_s - self.paid_since.pop(worker_id)
        del self.residency[worker_id]

    def finish(self, worker_id: str) -> None:
        self.end_s = self.clock.now_s
        for job_id in self.running.pop(worker_id):
            self.core.complete(job_id, {})
        if self.paid_count() > self.want():
            self.retire(worker_id)
        else:
            self.dispatch(worker_id)

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> tuple[PolicyResult, RunStats]:
        started = time.perf_counter()
        self.rescale()
        arrivals = iter(self.trace)
        upcoming = next(arrivals, None)
        tick_at = 0.0
        while upcoming is not None or self.ends or self.boots or next(self.core.fleet.queued(), None):
            times = (upcoming.arrival_s if upcoming is not None else math.inf,
                     self.ends[0][0] if self.ends else math.inf,
                     self.boots[0][0] if self.boots else math.inf, tick_at)
            self.clock.now_s = min(times)
            if times[0] == self.clock.now_s:
                self.arrive(upcoming)
                upcoming = next(arrivals, None)
            elif times[1] == self.clock.now_s:
                _, _, worker_id = heapq.heappop(self.ends)
                self.finish(worker_id)
            elif times[2] == self.clock.now_s:
                self.boot(heapq.heappop(self.boots)[1])
            else:
                tick_at = self.clock.now_s + self.scaling.tick_s
                for worker_id in self.core.tick():
                    self.dispatch(worker_id)
            self.rescale()
        # The tail: idle GPUs stay paid for until the policy gives them back.
        tail_end = self.end_s + self.scaling.knobs.scale_down_delay_s
        self.paid_s += sum(tail_end - since for since in self.paid_since.values())
        return self.result(), RunStats(self.batched_jobs / max(self.batches, 1), time.perf_counter() - started)

    def cost(self) -> FleetCost:
        waits = sorted(self.waits)
        return FleetCost(round(self.paid_s / 3600, 4), self.peak, round(self.end_s, 3),
                         round(self.busy_s / self.paid_s, 4) if self.paid_s else 0.0,
                         round(_percentile(waits, 0.50), 3), round(_percentile(waits, 0.99), 3))

    def result(self) -> PolicyResult:
        c = self.cost()
        return PolicyResult(self.loads, c.makespan_s, c.gpu_busy, c.p50_wait_s, c.p99_wait_s, self.lora_switches)


def run_autoscaled(spec: TraceSpec, trace: list[TraceJob], policy: PlacementPolicy,
                   scaling: AutoscaleSpec) -> tuple[FleetCost, PolicyResult]:
    sim = AutoscaledSimulation(spec, trace, policy, scaling)
    result, _ = sim.run()
    return sim.cost(), result


# --- `farm simulate --autoscale` ------------------------------------------------------------


def add_arguments(p) -> None:
    d, k = AutoscaleSpec(ScaleKnobs()), ScaleKnobs()
    g = p.add_argument_group("autoscaling", "also run the farm policy on a fleet that follows the queue")
    g.add_argument("--autoscale", action="store_true")
    g.add_argument("--max-gpus", type=int, default=None, help="autoscaler cap (default: --workers)")
    g.add_argument("--min-gpus", type=int, default=k.min_gpus)
    g.add_argument("--target-backlog-s", type=float, default=k.target_backlog_s, help="GPU seconds queued per GPU")
    g.add_argument("--scale-down-delay-s", type=float, default=k.scale_down_delay_s)
    g.add_argument("--start-delay-s", type=float, default=d.start_delay_s, help="request to a GPU taking work")


def scaling_of(args) -> AutoscaleSpec:
    """Raises ScaleKnobsError (a FarmError) on knobs that cannot work."""
    knobs = ScaleKnobs(max_gpus=args.max_gpus if args.max_gpus is not None else args.workers,
                       target_backlog_s=args.target_backlog_s, scale_down_delay_s=args.scale_down_delay_s,
                       min_gpus=args.min_gpus)
    return AutoscaleSpec(knobs, start_delay_s=args.start_delay_s)


def compare(spec: TraceSpec, trace: list[TraceJob], policy: PlacementPolicy, fixed: PolicyResult,
            scaling: AutoscaleSpec) -> dict[str, FleetCost]:
    """{"fixed": ..., "autoscaled": ...} for one placement policy."""
    autoscaled, _ = run_autoscaled(spec, trace, policy, scaling)
    return {"fixed": fixed_cost(spec.workers, fixed), "autoscaled": autoscaled}


def print_table(name: str, scaling: AutoscaleSpec, costs: dict[str, FleetCost]) -> None:
    k = scaling.knobs
    print(f"autoscaling ({name} policy): start delay {scaling.start_delay_s:g} s, target backlog "
          f"{k.target_backlog_s:g} GPU s per GPU, scale-down delay {k.scale_down_delay_s:g} s, "
          f"{k.min_gpus}..{k.max_gpus} GPUs")
    print(f"{'fleet':<14}{'gpu_hours':>10}{'peak_gpus':>10}{'makespan_s':>12}{'gpu_busy':>10}"
          f"{'p50_wait_s':>12}{'p99_wait_s':>12}")
    for fleet, c in costs.items():
        print(f"{fleet:<14}{c.gpu_hours:>10.2f}{c.peak_gpus:>10}{c.makespan_s:>12.1f}{c.gpu_busy:>10.3f}"
              f"{c.p50_wait_s:>12.2f}{c.p99_wait_s:>12.2f}")
