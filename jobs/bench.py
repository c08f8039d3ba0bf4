"""`farm bench`: what this machine's GPU renders per second, measured three ways in one call.

- raw: the engine alone in this process (LocalRenderer), jobs run as cross-job batches of
  each size in --buckets, compiled; the best size (images/s, within free memory) is the
  farm's batch size for that architecture and resolution;
- naive: one job at a time through the farm (Farm.local: Ray, queue, writer), eager, no
  pipelining: ComfyUI's way;
- farm: a queue of --jobs batch-1 jobs over --checkpoints checkpoints submitted at once,
  everything on (compiled UNet, batches of the best size, two batches in flight per worker).

Each mode reports images/s, NVML utilisation (mean and 5th percentile, sampled at 20 Hz),
latency p50/p99 (submit to files on disk), model loads and compile time. The JSON and a PNG
of utilisation over time go to --out, named by date and device.

Checkpoints are full-size random weights made on the spot (the GPU's work does not depend on
the weights' values); extra checkpoints are hard links of the first under other names (the
farm loads each name separately). Every job has its own seed and prompt."""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from farm.engine import JobContext, PlannedJob
from farm.engine.local import LocalRenderer
from farm.models.attention import SDPA, XFORMERS, requested_backend, xformers_problem
from farm.models.compiled import CompileConfig
from farm.models.make import make_checkpoint
from farm.records.paths import FarmPaths
from farm.worker.nvml import NvmlSampler
from jobs.bench_farm import bench_farm_modes
from jobs.bench_report import (
    DEFAULT_SIZE, MODES, BenchArgs, BenchStopped, ModeResult, device_label, mode_label, plot, say, say_mode,
    stop_on_sigterm, summarize, workflow,
)
from jobs.bench_switch import measure_switches

def bench_device() -> torch.device:
    """Where raw mode, the switch timings and the attention probe run: the GPU when there is one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _checkpoints(arch: str, root: Path, count: int) -> list[str]:
    folder = root / "models" / "checkpoints"
    first = folder / f"{arch}.safetensors"
    if not first.exists():
        t = time.perf_counter()
        make_checkpoint(arch, first, seed=0)
        say(f"made {arch} in {time.perf_counter() - t:.1f} s")
    names = [first.name]
    for i in range(1, count):
        other = folder / f"{arch}-{chr(ord('a') + i)}.safetensors"
        if not other.exists():
            try:
                os.link(first, other)
            except OSError:  # another file system: a copy
                shutil.copyfile(first, other)
        names.append(other.name)
    return names


# -- raw: the engine alone ----------------------------------------------------------------------

def _planned(renderer: LocalRenderer, ckpt: str, seeds: range, size: int, a: BenchArgs) -> list[PlannedJob]:
    jobs = []
    for seed in seeds:
        p = renderer.prepare(workflow(ckpt, seed, size, a.steps, a.sampler))
        jobs.append(PlannedJob(JobContext(p.prompt_id, p.prompt), p.plan))
    return jobs


def _run_raw(renderer: LocalRenderer, jobs: list[PlannedJob], batch: int) -> None:
    for i in range(0, len(jobs), batch):
        outcomes = renderer.engine.run_batch(jobs[i:i + batch])
        failed = [str(o.error) for o in outcomes if not o.ok]
        if failed:
            raise RuntimeError(f"raw batch of {batch} failed: {failed[0]}")


def bench_raw(arch: str, root: Path, ckpt: str, size: int, a: BenchArgs,
              record: Callable[[ModeResult], None]) -> tuple[list[ModeResult], dict]:
    device = bench_device()
    compile_cfg = CompileConfig(enabled=a.compile, backend=a.compile_backend)
    renderer = LocalRenderer(FarmPaths.under(root), device, compile=compile_cfg)
    seed = 100_000
    t = time.perf_counter()
    _run_raw(renderer, _planned(renderer, ckpt, range(seed, seed + 1), size, a), 1)
    first_s = time.perf_counter() - t
    say(f"{arch} raw: first job (load, and compile at batch 1) took {first_s:.1f} s")
    results = []
    for batch in a.buckets:
        seed += 1_000
        warm = _planned(renderer, ckpt, range(seed, seed + batch), size, a)
        _run_raw(renderer, warm, batch)  # records this bucket's CUDA graph
        count = -(-a.raw_jobs // batch) * batch
        jobs = _planned(renderer, ckpt, range(seed + batch, seed + batch + count), size, a)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        nvml = NvmlSampler(period_s=0.05)
        started = time.perf_counter()
        try:
            with nvml:
                _run_raw(renderer, jobs, batch)
        except torch.cuda.OutOfMemoryError:
            say(f"{arch} raw batch {batch}: out of memory; larger buckets skipped")
            break
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        r = summarize(f"raw_b{batch}", count, time.perf_counter() - started, batch, nvml, peak_vram_gib=peak)
        results.append(r)
        record(r)
    info = {"first_job_with_load_and_compile_s": round(first_s, 2), "compile": renderer.models.compiler.report(),
            "device_total_gib": torch.cuda.mem_get_info()[1] / 2**30 if device.type == "cuda" else None}
    renderer.models.unload_all()
    renderer.close()
    del renderer
    torch._dynamo.reset()  # drops the compiled graphs before the farm's worker needs the memory
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results, info


def best_batch(results: list[ModeResult], total_gib: float | None, headroom: float = 0.85) -> int:
    """The raw bucket with the most images/s whose peak memory fits `headroom` of the card
    (other checkpoints and a second batch in flight need the rest); ties: the smaller."""
    fits = [r for r in results if total_gib is None or r.peak_vram_gib is None
            or r.peak_vram_gib <= headroom * total_gib]
    if not fits:
        return 1
    best = max(r.images_per_s for r in fits)
    return min(r.batch for r in fits if r.images_per_s >= 0.98 * best)  # within noise: less latency


# -- the whole bench ---------------------------------------------------------------------------------

def _say_fallbacks(where: str, compile_report: dict) -> None:
    """A compiled UNet or VAE that fell back to eager makes every figure after it an eager
    one: say so on the bench's output, not only in its JSON."""
    for label, entry in compile_report.items():
        if isinstance(entry, dict) and entry.get("fallback"):
            say(f"warning: {where}: compiled {label} fell back to eager: {entry['fallback']}")


def bench_arch(arch: str, root: Path, a: BenchArgs, save: Callable[[dict], None]) -> dict:
    """Every mode asked for on one architecture. The result is handed to `save` after each
    mode, so a run stopped by its time limit keeps what it measured."""
    size = DEFAULT_SIZE[arch]
    names = _checkpoints(arch, root, a.checkpoints)
    result: dict = {"arch": arch, "size": size, "steps": a.steps, "sampler": a.sampler, "checkpoints": names,
                    "best_batch": max(a.buckets), "farm_vs_raw_same_batch": None, "modes": [], "farm": {}}

    def record(mode: ModeResult) -> None:
        say_mode(mode_label(arch, size, a), mode)
        result["modes"].append(asdict(mode))
        by_mode = {m["mode"]: m for m in result["modes"]}
        raw = by_mode.get(f"raw_b{result['best_batch']}")
        if "farm" in by_mode and raw:
            result["farm_vs_raw_same_batch"] = by_mode["farm"]["images_per_s"] / raw["images_per_s"]
        save(result)

    if "raw" in a.modes:
        raw, result["raw"] = bench_raw(arch, root, names[0], size, a, record)
        _say_fallbacks("raw", result["raw"]["compile"])
        result["best_batch"] = best_batch(raw, result["raw"]["device_total_gib"]) if raw else 1
        say(f"{arch} {size}px: best batch {result['best_batch']}")
        result["switch"] = measure_switches(FarmPaths.under(root).models, names, bench_device())
        gc.collect()
        say(f"{arch}: checkpoint switch into device memory, by source: {result['switch']}")
        save(result)
    bench_farm_modes(names, size, result["best_batch"], a, root, arch, record, result["farm"])
    for worker in result["farm"].get("farm_workers", []):
        _say_fallbacks(f"farm {worker.get('worker_id')}", worker.get("compile") or {})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=sorted(DEFAULT_SIZE), help="repeatable (default sd15)")
    parser.add_argument("--jobs", type=int, default=64, help="farm mode: batch-1 jobs queued at once")
    parser.add_argument("--naive-jobs", type=int, default=16)
    parser.add_argument("--raw-jobs", type=int, default=32, help="raw mode: jobs per batch size")
    parser.add_argument("--buckets", default="1,8,16", help="raw mode: batch sizes (jobs) to measure")
    parser.add_argument("--checkpoints", type=int, default=3, help="farm mode: jobs spread over this many")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--modes", default=",".join(MODES), help="any of raw,naive,farm")
    parser.add_argument("--no-compile", action="store_true", help="eager UNet everywhere")
    parser.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager"))
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
    try:
        buckets = tuple(sorted({int(b) for b in args.buckets.split(",") if b.strip()}))
    except ValueError:
        parser.error(f"--buckets: {args.buckets!r} is not a comma-separated list of batch sizes, e.g. 1,8,16")
    if not buckets or min(buckets) < 1:
        parser.error("--buckets: give batch sizes of at least 1, e.g. 1,8,16")
    a = BenchArgs(args.jobs, args.naive_jobs, args.raw_jobs, buckets, max(1, args.checkpoints), args.steps,
                  args.sampler, not args.no_compile, args.compile_backend, args.gpus, args.worker_gpus, modes)
    device, uuid = device_label()
    started = datetime.now(timezone.utc)
    # PyTorch's SDPA unless FARM_ATTENTION=xformers asks for xformers and it runs here; the
    # report says whether it would, and why not
    xformers = xformers_problem(bench_device(), torch.float16)
    attention = XFORMERS if requested_backend(None) == XFORMERS and xformers is None else SDPA
    say(f"attention: {attention}; xformers {'usable here' if xformers is None else 'not usable: ' + xformers}")
    report = {"device": device, "gpu_uuid": uuid, "gpus_visible": torch.cuda.device_count(),
              "date": started.isoformat(timespec="seconds"), "torch": torch.__version__,
              "compile": a.compile, "attention": {"backend": attention, "xformers": xformers or "usable"},
              "args": {**asdict(a), "buckets": list(buckets)}, "results": []}
    stem = f"bench-{started:%Y%m%d-%H%M}-{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-').lower()}"
    path = args.json or args.out / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict) -> None:
        if not report["results"] or report["results"][-1] is not result:
            report["results"].append(result)
        path.write_text(json.dumps(report, indent=1))  # what is measured survives a later timeout

    status = 0
    stop_on_sigterm()
    try:
        for arch in args.arch or ["sd15"]:
            save(bench_arch(arch, args.root, a, save))
    except BenchStopped as stopped:
        say(f"stopped by {stopped} (a time limit?): writing what was measured so far")
        report["stopped"] = str(stopped)
        status = 128 + signal.SIGTERM
    finally:
        if "naive" in modes or "farm" in modes:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    png = plot(report, path.with_suffix(".png"))
    report["plot"] = png.name if png else None
    path.write_text(json.dumps(report, indent=1))
    say(f"wrote {path}" + (f" and {png}" if png else ""))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
