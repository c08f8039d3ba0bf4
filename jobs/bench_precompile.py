"""`farm bench`'s first phase: every architecture's cold compile at once, one process each.

Compiling a UNet is mostly single-threaded Python (dynamo's trace, AOTAutograd, inductor's
lowering; only Triton's kernel builds use a pool), so SD1.5 and SDXL compiled one after the
other leave a 16-core machine idle for minutes: on an H100, SD1.5's first shape took 82 s and
its VAE decoder 22 s. Here each architecture's process compiles the UNet first, on random
weights, as a worker started with `--warm` does (UNetCompiler.warm), while a thread makes the
checkpoints; then it runs one batch of the farm's size through a LocalRenderer, which puts
the checkpoint's weights on the warmed UNet's stage and compiles the VAE decoder. What it
compiles lands in inductor's disk cache under the bench root, which raw mode (this bench's
own process) and the farm's worker (a Ray actor) read: each then pays dynamo's trace and a
cache load, not code generation.

The batch is the largest raw bucket, which the plans keep at the farm's batch: the graphs
split at 64 UNet rows (32 jobs), so a larger one would compile again for the farm (see
farm.models.compiled.GRAPH_SPLIT_ROWS).

    python -m jobs.bench_precompile --arch sd15 --batch 16 --root .farm/bench

prints its progress and, last, one line `precompiled {json}` that the bench reads.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from jobs.bench_report import DEFAULT_SIZE, ArchRun, bench_checkpoints, say

RESULT_PREFIX = "precompiled "


class Precompile:
    """Every run's cold compile, in parallel processes, started at once; `wait()` gives each
    run's result "precompile" (seconds, or why it failed: raw mode then compiles for itself).
    `stop()` kills what still runs (a bench stopped by SIGTERM)."""

    def __init__(self, runs: list[ArchRun], root: Path):
        self.procs: list[tuple[ArchRun, subprocess.Popen, threading.Thread]] = []
        for run in runs:
            a = run.args
            cmd = [sys.executable, "-m", "jobs.bench_precompile", "--arch", run.arch, "--batch", str(max(a.buckets)),
                   "--checkpoints", str(a.checkpoints), "--steps", str(a.steps), "--sampler", a.sampler,
                   "--backend", a.compile_backend, "--root", str(root)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            relay = threading.Thread(target=_relay, args=(run, proc), daemon=True)
            relay.start()
            self.procs.append((run, proc, relay))
        say(f"compiling {', '.join(r.arch for r in runs)} at once, one process each")

    def wait(self) -> None:
        for run, proc, relay in self.procs:
            code = proc.wait()
            relay.join(timeout=10)
            if code != 0 or "precompile" not in run.result:
                run.result["precompile"] = {"error": f"exit status {code}"}
                say(f"warning: {run.arch}: the compile process failed (exit {code}); raw mode compiles itself")

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _relay(run: ArchRun, proc: subprocess.Popen) -> None:
    """The process's lines on the bench's output, each marked with its architecture."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            run.result["precompile"] = json.loads(line[len(RESULT_PREFIX):])
        print(f"    [{run.arch} compile] {line.rstrip()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_precompile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=sorted(DEFAULT_SIZE))
    parser.add_argument("--batch", type=int, required=True, help="jobs in the batch compiled")
    parser.add_argument("--checkpoints", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"))
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)

    from farm.engine.local import LocalRenderer
    from farm.models.compiled import CompileConfig
    from farm.records.paths import FarmPaths
    from jobs.bench_report import bench_device, planned_jobs, run_batches

    started = time.perf_counter()
    made: dict[str, object] = {}

    def make() -> None:  # beside the UNet's compile, which needs no checkpoint
        try:
            made["names"] = bench_checkpoints(args.arch, args.root, args.checkpoints)
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread below
            made["error"] = exc
        made["seconds"] = time.perf_counter() - started

    maker = threading.Thread(target=make, name="make-checkpoints")
    maker.start()
    latent = DEFAULT_SIZE[args.arch] // 8
    renderer = LocalRenderer(FarmPaths.under(args.root), bench_device(),
                             compile=CompileConfig(enabled=True, backend=args.backend,
                                                   warm_shapes=((args.arch, args.batch, latent, latent),)))
    warmed = renderer.models.compiler.warm(renderer.engine.dtype)
    unet_s = time.perf_counter() - started
    maker.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    jobs = planned_jobs(renderer, made["names"][0], range(90_000, 90_000 + args.batch),  # type: ignore[index]
                        DEFAULT_SIZE[args.arch], args.steps, args.sampler)
    t = time.perf_counter()
    run_batches(renderer, jobs, args.batch)
    batch_s = time.perf_counter() - t
    report = renderer.models.compiler.report()
    renderer.close()
    say(f"{args.arch}: UNet compiled in {unet_s:.1f} s ({warmed or 'not warmed'}), checkpoints made meanwhile "
        f"in {made['seconds']:.1f} s; a first batch of {args.batch} (load, VAE compile) in {batch_s:.1f} s")
    print(RESULT_PREFIX + json.dumps({"batch": args.batch, "make_checkpoints_s": round(made["seconds"], 2),
                                      "unet_warm_s": round(unet_s, 2), "warmed": warmed,
                                      "first_batch_s": round(batch_s, 2), "compile": report}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
