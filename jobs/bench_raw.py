"""`farm bench`'s raw mode: the engine alone in one process (LocalRenderer, no Ray), jobs run
as cross-job batches of each size in the plan's buckets, largest first; then the checkpoint
switch timings.

Where it runs. With compiling on (the default), in each architecture's compile process
(jobs.bench_precompile), right after that process's first batch: its compiled UNet and VAE
decoder are there already, so raw mode pays neither a second dynamo trace nor a second
checkpoint load, and SD1.5's raw mode runs while SDXL is still compiling. A lock file under
the bench root (`gpu_turn`) keeps the processes' GPU batches apart: one process's first
batch and raw mode never run beside another's. What still runs beside them is the other
processes' compiling, which is CPU work; the result records the load average. Without
compiling, or when a compile process failed, raw mode runs in the bench's own process after
the farm modes (`raw_and_switch`)."""
from __future__ import annotations

import fcntl
import gc
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from farm.engine import PlannedJob
from farm.engine.local import LocalRenderer
from farm.records.paths import FarmPaths
from farm.worker.nvml import NvmlSampler
from jobs.bench_report import (
    ArchRun, ModeResult, bench_device, planned_jobs, run_batches, say, say_fallbacks, summarize,
)
from jobs.bench_switch import measure_switches


@contextmanager
def gpu_turn(root: Path) -> Iterator[None]:
    """This process's turn on the GPU among the bench's processes (an exclusive lock on a
    file under the bench root; released when the block ends or the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "gpu.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def measure_raw(run: ArchRun, renderer: LocalRenderer, where: str, first_s: float | None = None) -> dict:
    """Each bucket of `run`'s plan on `renderer`, the largest first, recorded on `run`; returns
    what the JSON keeps under "raw" (`where`: "compile process" or "bench process").
    `first_s`: the seconds of a batch of the largest bucket that already ran on this renderer
    (the compile process's first batch), else one runs here first: the checkpoint's load
    and, unless inductor's cache has it, the compile."""
    a, device = run.args, renderer.engine.device
    buckets = sorted(a.buckets, reverse=True)

    def jobs(seed: int, count: int) -> list[PlannedJob]:
        return planned_jobs(renderer, run.names[0], range(seed, seed + count), run.size, a.steps, a.sampler)

    if first_s is None:
        if device.type == "cuda":  # a batch that records a bucket's CUDA graph: its memory counts
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        run_batches(renderer, jobs(100_000, buckets[0]), buckets[0])
        first_s = time.perf_counter() - t
        say(f"{run.arch} raw: first batch of {buckets[0]} (load, and compile unless cached) took {first_s:.1f} s")
    for n, batch in enumerate(buckets):
        seed = 101_000 + 1_000 * n
        count = -(-a.raw_jobs // batch) * batch
        measured = jobs(seed + batch, count)
        nvml = NvmlSampler(period_s=0.05)
        try:
            if n > 0:  # a warm batch records this bucket's graph (the first batch did the largest's)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                run_batches(renderer, jobs(seed, batch), batch)
            started = time.perf_counter()
            with nvml:
                run_batches(renderer, measured, batch)
        except torch.cuda.OutOfMemoryError:
            say(f"{run.arch} raw batch {batch}: out of memory; measuring the smaller ones")
            torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        run.record(summarize(f"raw_b{batch}", count, time.perf_counter() - started, batch, nvml, peak_vram_gib=peak))
    return {"first_batch": buckets[0], "first_batch_with_load_and_compile_s": round(first_s, 2),
            "compile": renderer.models.compiler.report(),
            "device_total_gib": torch.cuda.mem_get_info()[1] / 2**30 if device.type == "cuda" else None,
            "load_average": round(os.getloadavg()[0], 1), "measured_in": where}


def release(renderer: LocalRenderer) -> None:
    """The renderer's checkpoints and compiled graphs out of device memory (the switch
    timings, or the farm's worker, need it)."""
    renderer.models.unload_all()
    renderer.close()
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def raw_and_switches(run: ArchRun, renderer: LocalRenderer, root: Path, where: str,
                     first_s: float | None = None) -> tuple[dict, dict]:
    """measure_raw, then the renderer released (its device memory is the switch timings'),
    then the switch timings: (raw info, switch timings)."""
    try:
        info = measure_raw(run, renderer, where, first_s=first_s)
    finally:
        release(renderer)
    started = time.perf_counter()
    switch = measure_switches(FarmPaths.under(root).models, run.names, bench_device())
    say(f"{run.arch}: switch timings took {time.perf_counter() - started:.1f} s")
    return info, switch


def best_batch(results: list[dict], total_gib: float | None, headroom: float = 0.85) -> int:
    """The raw bucket with the most images/s whose peak memory fits `headroom` of the card
    (other checkpoints and a second batch in flight need the rest); ties: the smaller."""
    fits = [r for r in results if total_gib is None or r["peak_vram_gib"] is None
            or r["peak_vram_gib"] <= headroom * total_gib]
    if not fits:
        return 1
    best = max(r["images_per_s"] for r in fits)
    return min(r["batch"] for r in fits if r["images_per_s"] >= 0.98 * best)  # within noise: less latency


def finish_raw(run: ArchRun, info: dict, switch: dict) -> None:
    """Raw mode's summary on `run`: its info, the best batch, the switch timings; saved."""
    run.result["raw"] = info
    say_fallbacks("raw", info["compile"])
    raw = [m for m in run.result["modes"] if m["mode"].startswith("raw_")]
    run.result["best_batch"] = best_batch(raw, info["device_total_gib"]) if raw else 1
    say(f"{run.arch} {run.size}px: best batch {run.result['best_batch']}")
    run.result["switch"] = switch
    say(f"{run.arch}: checkpoint switch into device memory, by source: {switch}")
    run.save(run.result)


def adopt_raw(run: ArchRun, measured: dict) -> None:
    """Raw mode as a compile process measured it (its "raw" entry: modes, info, switch)."""
    for mode in measured["modes"]:
        run.record(ModeResult(**mode), quiet=True)  # its line was relayed as it was measured
    finish_raw(run, measured["info"], measured["switch"])


def raw_and_switch(run: ArchRun, root: Path) -> None:
    """Raw mode in this process, on a renderer of its own (compiled unless --no-compile)."""
    a = run.args
    renderer = LocalRenderer(FarmPaths.under(root), bench_device(),
                             compile=a.compile_config())
    finish_raw(run, *raw_and_switches(run, renderer, root, "bench process"))
