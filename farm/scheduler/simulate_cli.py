"""`farm simulate`'s command line: the trace's flags, every policy on it (in parallel
processes for big traces), the table or JSON, and with --autoscale the autoscaled fleet
against the fixed one (simulate_autoscale.py)."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

from farm.errors import FarmError
from farm.scheduler import simulate_autoscale as autoscale
from farm.scheduler.simulate import (
    POLICY_NAMES,
    PolicyResult,
    RunStats,
    ideal_makespan_s,
    lower_bound_loads,
    make_policy,
    run_policy,
)
from farm.scheduler.simulate import (
    __doc__ as SIMULATE_DOC,
)
from farm.scheduler.trace import TraceSpec, describe, make_trace


def _run_named(spec: TraceSpec, name: str, max_wait_s: float | None) -> tuple[PolicyResult, RunStats]:
    """One policy's run in a worker process (the trace is rebuilt there: it is deterministic)."""
    return run_policy(spec, make_trace(spec), make_policy(name, max_wait_s))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    d = TraceSpec()
    p = argparse.ArgumentParser(prog="farm simulate", description=SIMULATE_DOC.split("\n")[0])
    p.add_argument("--jobs", type=int, default=d.jobs)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--checkpoints", type=int, default=d.checkpoints)
    p.add_argument("--zipf", type=float, default=d.zipf)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--load", type=float, default=d.load, help="offered load / capacity")
    p.add_argument("--arrivals", choices=("bursty", "poisson"), default=d.arrivals)
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--gpu-gb", type=float, default=d.gpu_gb)
    p.add_argument("--pinned-gb", type=float, default=d.pinned_gb)
    p.add_argument("--loras", type=int, default=d.loras,
                   help="LoRAs per checkpoint; jobs then name a LoRA set (default: none)")
    p.add_argument("--policies", default=",".join(POLICY_NAMES),
                   help="comma-separated subset of " + ", ".join(POLICY_NAMES))
    p.add_argument("--max-wait-s", type=float, default=None, help="farm's starvation bound")
    p.add_argument("--processes", type=int, default=0,
                   help="policies simulated at once (default: one per core from 20,000 jobs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    autoscale.add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown:
        print(f"unknown policies {unknown}; choose from {', '.join(POLICY_NAMES)}")
        return 2
    try:
        spec = TraceSpec(jobs=args.jobs, workers=args.workers, checkpoints=args.checkpoints,
                         zipf=args.zipf, seed=args.seed, load=args.load, arrivals=args.arrivals,
                         max_batch=args.max_batch, gpu_gb=args.gpu_gb, pinned_gb=args.pinned_gb, loras=args.loras)
        scaling = autoscale.scaling_of(args) if args.autoscale else None
    except FarmError as exc:
        print(exc)
        return 2
    trace = make_trace(spec)
    processes = args.processes or (min(len(names), os.cpu_count() or 1) if spec.jobs >= 20_000 else 1)
    if processes > 1:  # policies are independent runs: one per core
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            runs = [pool.submit(_run_named, spec, name, args.max_wait_s) for name in names]
            results = dict(zip(names, (run.result() for run in runs)))
    else:
        results = {name: run_policy(spec, trace, make_policy(name, args.max_wait_s)) for name in names}
    bound = lower_bound_loads(spec.workers, trace)
    info = {**describe(spec, trace), "ideal_makespan_s": round(ideal_makespan_s(spec.workers, trace), 3)}
    # autoscaling: the first policy named, on a fleet that follows the queue, against its fixed run
    costs = None if scaling is None else autoscale.compare(spec, trace, make_policy(names[0], args.max_wait_s),
                                                          results[names[0]][0], scaling)
    if args.json:
        answer = {"trace": info, "lower_bound_loads": bound,
                  "policies": {n: asdict(r) for n, (r, _) in results.items()}}
        if costs is not None:
            answer["autoscale"] = {"policy": names[0], "knobs": asdict(scaling.knobs),
                                   "start_delay_s": scaling.start_delay_s,
                                   **{fleet: asdict(c) for fleet, c in costs.items()}}
        print(json.dumps(answer))
        return 0
    print(f"trace: {spec.jobs} jobs, {spec.workers} workers, {spec.checkpoints} checkpoints "
          f"(zipf {spec.zipf}), {spec.arrivals} arrivals at load {spec.load}, "
          f"span {info['span_s']:.0f} s, ideal makespan {info['ideal_makespan_s']:.0f} s")
    print(f"lower bound on model loads: {bound}")
    header = f"{'policy':<14}{'loads':>8}{'lora_sw':>9}{'makespan_s':>12}{'gpu_busy':>10}{'p50_wait_s':>12}" \
             f"{'p99_wait_s':>12}{'batch':>7}{'sim_s':>8}"
    print(header)
    for name, (r, s) in results.items():
        print(f"{name:<14}{r.model_loads:>8}{r.lora_switches:>9}{r.makespan_s:>12.1f}{r.gpu_busy:>10.3f}"
              f"{r.p50_wait_s:>12.2f}{r.p99_wait_s:>12.2f}{s.mean_batch:>7.2f}{s.wall_s:>8.1f}")
    if costs is not None:
        autoscale.print_table(names[0], scaling, costs)
    return 0
