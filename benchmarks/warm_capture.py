"""Does a batch after a worker's warm-up replay the compiled UNet's CUDA graph, or fail its
capture? One GPU process per variant of what happens between the warm-up and the first
batch (the bench's compile processes warm, then run a batch: on an H100 under torch 2.11
that batch's capture failed with cudaErrorStreamCaptureInvalidated, in calls 7 and 8, while
a farm worker that compiles inside its first job never failed).

    python -m benchmarks.warm_capture --root /tmp/wc --after-warm nothing|sync-gc|record

nothing: as the bench does; sync-gc: torch.cuda.synchronize() and gc.collect() first;
record: the warm-up calls the graph a second time (CUDA graph trees record on the second
call of a shape), so the batch replays it. Prints one JSON line: the UNet stage's report.

Measured on an H100 on 2026-12-07 (benchmarks/results/README-gpu-2026-12-07.md): nothing and
sync-gc failed the capture (cuDNN could not allocate inside it); record ran compiled. Since
then UNetCompiler.warm records the graph itself, so every variant now records during the
warm-up (a warm-up of one call per shape, as before, brings the fault back)."""
from __future__ import annotations

import argparse
import gc
import json
import logging
import time
from pathlib import Path

import torch

from farm.engine.local import LocalRenderer
from farm.models.compiled import CompileConfig, _call_on_dummies
from farm.records.paths import FarmPaths
from farm.sampling.stage import run_sampling
from jobs.bench_report import DEFAULT_SIZE, bench_checkpoints, bench_device, planned_jobs, run_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--after-warm", choices=("nothing", "sync-gc", "record"), default="nothing")
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"))
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    [name] = bench_checkpoints(a.arch, a.root, 1)
    latent = DEFAULT_SIZE[a.arch] // 8
    device = bench_device()
    # the VAE eager: its compile (tens of seconds cold) is not what is probed
    config = CompileConfig(enabled=True, backend=a.backend, vae=False, warm_shapes=((a.arch, a.jobs, latent, latent),))
    renderer = LocalRenderer(FarmPaths.under(a.root), device, compile=config)
    started = time.perf_counter()
    renderer.models.compiler.warm(renderer.engine.dtype)
    warm_s = time.perf_counter() - started
    [stage] = [s for label, s in renderer.models.compiler._stages.items() if label.startswith("unet")]
    if a.after_warm == "sync-gc":
        if device.type == "cuda":
            torch.cuda.synchronize()
        gc.collect()
    elif a.after_warm == "record":
        run_sampling(device, lambda: _call_on_dummies(stage.runner, stage.module, 2 * a.jobs,
                                                                    latent, latent))
    jobs = planned_jobs(renderer, name, range(a.jobs * 2), 8 * latent, a.steps, "euler")
    started = time.perf_counter()
    run_batches(renderer, jobs, a.jobs)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    run_batches(renderer, planned_jobs(renderer, name, range(100, 100 + a.jobs), 8 * latent, a.steps, "euler"),
                a.jobs)
    again_s = time.perf_counter() - started
    report = renderer.models.compiler.report()
    print("RESULT " + json.dumps({"after_warm": a.after_warm, "warm_s": round(warm_s, 1),
                                  "two_batches_s": round(first_s, 2), "third_batch_s": round(again_s, 2),
                                  "unet": report[stage.label]}), flush=True)


if __name__ == "__main__":
    main()
