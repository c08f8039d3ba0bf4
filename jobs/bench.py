"""`farm bench`: what this machine's GPU renders per second, measured three ways in one call.

- raw: the engine alone (LocalRenderer, no Ray), jobs run as cross-job batches of each size
  in --buckets, largest first, compiled; it reports the best size (images/s, within free
  memory), what a measured table would tell the farm's batch sizer (jobs.bench_raw);
- naive: one job at a time through the farm (Farm.local: Ray, queue, writer), eager, no
  pipelining: ComfyUI's way;
- farm: a queue of --jobs batch-1 jobs over --checkpoints checkpoints submitted at once,
  everything on (compiled UNet, batches as the farm's batch sizer allows them, two batches
  in flight per worker); raw mode measures that batch size too (farm_vs_raw_same_batch).

Each mode reports images/s, NVML utilisation (mean and 5th percentile, sampled at 20 Hz),
latency p50/p99 (submit to files on disk), model loads and compile time. The JSON and a PNG
of utilisation over time go to --out, named by date and device.

One call measures every architecture (on a GPU by default SD1.5 at 512 px and SDXL at
1024 px, each with its own plan: jobs, buckets, checkpoints) in three phases, so that the
slow parts happen once:
1. cold compiles of all architectures at once, in two processes each (jobs.bench_precompile:
   compiling is mostly single-threaded Python), while the eager farm of the naive mode
   starts. Each architecture's UNet process then measures raw mode on what it compiled, in
   turn with the others (SD1.5's raw mode runs while SDXL still compiles), and fills
   inductor's disk cache, which the farm's worker reads;
2. naive, over every architecture, on one farm;
3. farm, over every architecture, on one compiled farm (a farm's start, Ray's workers
   importing torch, is paid twice, not four times).
Raw mode runs last, in this process, only where a compile process did not measure it
(--no-compile, or a compile process that failed).

Checkpoints are full-size random weights made on the spot (the GPU's work does not depend on
the weights' values); extra checkpoints are hard links of the first under other names (the
farm loads each name separately). Every job has its own seed and prompt."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from farm.models.attention import SDPA, XFORMERS, requested_backend, xformers_problem
from jobs.bench_farm import bench_farm, bench_naive, start_naive_farm
from jobs.bench_precompile import Precompile
from jobs.bench_raw import adopt_raw, raw_and_switch
from jobs.bench_report import (
    ARCH_PLANS, DEFAULT_PLAN, DEFAULT_SIZE, MODES, ArchRun, BenchArgs, BenchStopped, bench_checkpoints, bench_device,
    device_label, plot, say, say_fallbacks, stop_on_sigterm,
)


# -- the whole bench ---------------------------------------------------------------------------------

def bench_all(runs: list[ArchRun], root: Path, a: BenchArgs, phases: dict[str, float]) -> None:
    """The phases, each over every architecture; the JSON is saved after every mode, and
    `phases` gets each phase's seconds: where the call's time went."""
    def phase(name: str, started: float) -> None:
        phases[name] = round(time.perf_counter() - started, 1)
        # the load average: a busy CPU slows eager batch-1 jobs, which wait on kernel launches
        say(f"phase {name} took {phases[name]:.1f} s; load average {os.getloadavg()[0]:.1f}")

    t = time.perf_counter()
    compiling = Precompile(runs, root) if a.compile and ("raw" in a.modes or "farm" in a.modes) else None
    try:
        # the naive farm starts while the compile processes run (this process only waits);
        # it loads no checkpoint before its first job
        naive_farm = start_naive_farm(root, a) if "naive" in a.modes else None
        if compiling is not None:
            compiling.wait()  # the compile processes make each architecture's checkpoints too
    finally:
        if compiling is not None:
            compiling.stop()
    for run in runs:
        run.names = bench_checkpoints(run.arch, root, run.args.checkpoints)
        run.result["checkpoints"] = run.names
        measured = run.result.get("precompile", {}).pop("raw", None)
        if measured is not None:  # raw mode, measured by the compile process after its first batch
            adopt_raw(run, measured)
    phase("compile_and_start", t)  # the compile processes, and the naive farm starting meanwhile
    if naive_farm is not None:
        t = time.perf_counter()
        bench_naive(runs, naive_farm)
        phase("naive", t)
    if "farm" in a.modes:
        t = time.perf_counter()
        bench_farm(runs, a, root)
        for run in runs:
            for worker in run.result["farm"].get("farm_workers", []):
                say_fallbacks(f"farm {worker.get('worker_id')}", worker.get("compile") or {})
        phase("farm", t)
    if "raw" in a.modes and any("raw" not in run.result for run in runs):
        t = time.perf_counter()
        for run in runs:
            if "raw" not in run.result:  # not measured by its compile process
                raw_and_switch(run, root)
        phase("raw", t)


def arch_args(args: argparse.Namespace, arch: str, shared: dict) -> BenchArgs:
    """The architecture's plan, with what the command line gave for every architecture."""
    plan = ARCH_PLANS.get(arch, DEFAULT_PLAN)
    given = {"jobs": args.jobs, "naive_jobs": args.naive_jobs, "raw_jobs": args.raw_jobs,
             "buckets": args.buckets, "checkpoints": args.checkpoints}
    plan = dataclasses.replace(plan, **{k: v for k, v in given.items() if v is not None})
    return BenchArgs(**{**dataclasses.asdict(plan), "buckets": tuple(sorted(set(plan.buckets))),
                        "checkpoints": max(1, plan.checkpoints)}, **shared)


def _buckets(parser: argparse.ArgumentParser, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        buckets = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        parser.error(f"--buckets: {text!r} is not a comma-separated list of batch sizes, e.g. 1,8,16")
    if not buckets or min(buckets) < 1:
        parser.error("--buckets: give batch sizes of at least 1, e.g. 1,8,16")
    return buckets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=sorted(DEFAULT_SIZE),
                        help="repeatable (default: sd15 and sdxl on a GPU, sd15 without one)")
    parser.add_argument("--jobs", type=int, help="farm mode: batch-1 jobs queued at once (default per arch: "
                        + ", ".join(f"{k} {v.jobs}" for k, v in ARCH_PLANS.items()) + ")")
    parser.add_argument("--naive-jobs", type=int)
    parser.add_argument("--raw-jobs", type=int, help="raw mode: jobs per batch size")
    parser.add_argument("--buckets", help="raw mode: batch sizes (jobs) to measure (default per arch: "
                        + ", ".join(f"{k} {','.join(map(str, v.buckets))}" for k, v in ARCH_PLANS.items()) + ")")
    parser.add_argument("--checkpoints", type=int, help="farm mode: jobs spread over this many")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--modes", default=",".join(MODES), help="any of raw,naive,farm")
    parser.add_argument("--no-compile", action="store_true", help="eager UNet everywhere")
    parser.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager"))
    parser.add_argument("--no-fused-qkv", action="store_true",
                        help="the compiled UNet's attention with q, k, v projections apart (a lever measured off)")
    parser.add_argument("--gpus", type=int, help="GPUs for the farm (one worker each); default: all visible")
    parser.add_argument("--worker-gpus", type=float, default=1.0, help="GPUs per worker (0.5: two share one)")
    parser.add_argument("--root", type=Path, default=Path(".farm/bench"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="JSON and PNG go here")
    parser.add_argument("--json", type=Path, help="the JSON here instead")
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"--modes: {bad[0]!r} is not one of {', '.join(MODES)}")
    args.buckets = _buckets(parser, args.buckets)
    shared = dict(steps=args.steps, sampler=args.sampler, compile=not args.no_compile,
                  compile_backend=args.compile_backend, gpus=args.gpus, worker_gpus=args.worker_gpus, modes=modes,
                  fused_qkv=not args.no_fused_qkv)
    archs = list(dict.fromkeys(args.arch or (["sd15", "sdxl"] if torch.cuda.is_available() else ["sd15"])))
    per_arch = {arch: arch_args(args, arch, shared) for arch in archs}
    a = per_arch[archs[0]]  # what every architecture shares: modes, compile, GPUs
    device, uuid = device_label()
    started = datetime.now(timezone.utc)
    # PyTorch's SDPA unless FARM_ATTENTION=xformers asks for xformers and it runs here; the
    # report says whether it would, and why not
    xformers = xformers_problem(bench_device(), torch.float16)
    attention = XFORMERS if requested_backend(None) == XFORMERS and xformers is None else SDPA
    say(f"attention: {attention}; xformers {'usable here' if xformers is None else 'not usable: ' + xformers}")
    report = {"device": device, "gpu_uuid": uuid, "gpus_visible": torch.cuda.device_count(),
              "date": started.isoformat(timespec="seconds"), "torch": torch.__version__,
              "compile": a.compile, "fused_qkv": a.fused_qkv,
              "attention": {"backend": attention, "xformers": xformers or "usable"},
              "args": {arch: {**dataclasses.asdict(x), "buckets": list(x.buckets)} for arch, x in per_arch.items()},
              "phases_s": {}, "results": []}
    stem = f"bench-{started:%Y%m%d-%H%M}-{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-').lower()}"
    path = args.json or args.out / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(_result: dict) -> None:
        path.write_text(json.dumps(report, indent=1))  # what is measured survives a later timeout

    runs = []
    for arch, x in per_arch.items():
        size = DEFAULT_SIZE[arch]
        result = {"arch": arch, "size": size, "steps": x.steps, "sampler": x.sampler, "checkpoints": [],
                  "best_batch": None, "farm_batch": None, "farm_vs_raw_same_batch": None, "modes": [], "farm": {}}
        report["results"].append(result)
        runs.append(ArchRun(arch, size, x, result, save))
    status = 0
    stop_on_sigterm()
    call_started = time.perf_counter()
    try:
        bench_all(runs, args.root, a, report["phases_s"])
    except BenchStopped as stopped:
        say(f"stopped by {stopped} (a time limit?): writing what was measured so far")
        report["stopped"] = str(stopped)
        status = 128 + signal.SIGTERM
    finally:
        if "naive" in modes or "farm" in modes:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    report["seconds"] = round(time.perf_counter() - call_started, 1)
    png = plot(report, path.with_suffix(".png"))
    report["plot"] = png.name if png else None
    path.write_text(json.dumps(report, indent=1))
    say(f"wrote {path}" + (f" and {png}" if png else "") + f"; {report['seconds']:.0f} s in all")
    return status
