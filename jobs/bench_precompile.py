"""`farm bench`'s first phase: every architecture's cold compile at once, one process each.

Compiling a UNet is mostly single-threaded Python (dynamo's trace, AOTAutograd, inductor's
lowering; only Triton's kernel builds use a pool), so SD1.5 and SDXL compiled one after the
other leave a 16-core machine idle for minutes: on an H100, SD1.5's first shape took 82 s and
its VAE decoder 22 s. Here each architecture's process compiles the UNet first, on random
weights, as a worker started with `--warm` does (UNetCompiler.warm), while a thread makes the
checkpoints; then it runs one batch of the farm's size through a LocalRenderer, which puts
the checkpoint's weights on the warmed UNet's stage, and, when the bench measures raw mode,
raw mode and the switch timings on that renderer (jobs.bench_raw), taking its turn on the
GPU with the other processes. A second process per architecture (`--part vae`) compiles the
VAE decoder on random weights meanwhile, so that batch finds the decoder's graph in the
cache instead of compiling it after the UNet. What they compile lands in inductor's disk
cache under the bench root, which the farm's worker (a Ray actor) reads: it then pays
dynamo's trace and a cache load, not code generation.

The batch is the largest raw bucket, which the plans keep at the farm's batch: the graphs
split at 64 UNet rows (32 jobs), so a larger one would compile again for the farm (see
farm.models.compiled.GRAPH_SPLIT_ROWS).

    python -m jobs.bench_precompile --arch sd15 --batch 16 --root .farm/bench

prints its progress and, last, one line `precompiled {json}` that the bench reads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jobs.bench_report import DEFAULT_SIZE, ArchRun, bench_checkpoints, say

RESULT_PREFIX = "precompiled "


PARTS = {"all": "precompile", "vae": "precompile_vae"}  # --part -> the run's result key


class Precompile:
    """Every run's cold compiles, in parallel processes, started at once: per architecture
    one for the UNet and the first batch, one for the VAE decoder alone (its graph is then
    in the cache when that batch decodes). `wait()` gives each run's results "precompile"
    and "precompile_vae" (seconds, or why it failed: raw mode then compiles for itself).
    `stop()` kills what still runs (a bench stopped by SIGTERM)."""

    def __init__(self, runs: list[ArchRun], root: Path):
        self.procs: list[tuple[ArchRun, str, subprocess.Popen, threading.Thread]] = []
        for run in runs:
            a = run.args
            for part in PARTS:
                cmd = [sys.executable, "-m", "jobs.bench_precompile", "--arch", run.arch, "--part", part,
                       "--batch", str(max(a.buckets)), "--checkpoints", str(a.checkpoints), "--steps", str(a.steps),
                       "--sampler", a.sampler, "--backend", a.compile_backend, "--root", str(root)]
                if not a.fused_qkv:
                    cmd.append("--no-fused-qkv")
                if part == "all" and "raw" in a.modes:
                    cmd += ["--raw-buckets", ",".join(map(str, a.buckets)), "--raw-jobs", str(a.raw_jobs)]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
                relay = threading.Thread(target=_relay, args=(run, part, proc), daemon=True)
                relay.start()
                self.procs.append((run, part, proc, relay))
        say(f"compiling {', '.join(r.arch for r in runs)} at once: UNet and first batch, VAE decoder, "
            "one process each")

    def wait(self) -> None:
        for run, part, proc, relay in self.procs:
            code = proc.wait()
            relay.join(timeout=10)
            if PARTS[part] not in run.result:
                run.result[PARTS[part]] = {"error": f"exit status {code}"}
                say(f"warning: {run.arch}: the {part} compile process failed (exit {code}); "
                    "what it would have compiled compiles later")
            elif code != 0:  # it reported, then crashed on its way out: what it compiled is cached
                run.result[PARTS[part]]["exit_status"] = code
                say(f"warning: {run.arch}: the {part} compile process exited with status {code} after reporting")

    def stop(self) -> None:
        for _, _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _relay(run: ArchRun, part: str, proc: subprocess.Popen) -> None:
    """The process's lines on the bench's output, each marked with its architecture."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            result = run.result[PARTS[part]] = json.loads(line[len(RESULT_PREFIX):])
            # raw mode's measurements (utilisation timelines) go to the JSON, not the output
            line = RESULT_PREFIX + json.dumps({k: v for k, v in result.items() if k != "raw"})
        print(f"    [{run.arch} {'compile' if part == 'all' else part}] {line.rstrip()}", flush=True)


def compile_vae(arch: str, batch: int, root: Path, backend: str) -> dict:
    """The architecture's VAE decoder compiled on random weights, set up as a loaded
    checkpoint's (device, dtype, attention) and called as VAEDecode calls it: as many rows as
    one decoder call of the batch takes, under inference mode."""
    import torch

    from farm.engine.local import LocalRenderer
    from farm.models.arch import ARCH_FAMILY
    from farm.models.compiled import CompileConfig, _random_vae
    from farm.nodes.latent import DECODE_PIXELS_PER_CALL
    from farm.records.paths import FarmPaths
    from jobs.bench_report import bench_device

    renderer = LocalRenderer(FarmPaths.under(root), bench_device(),
                             compile=CompileConfig(enabled=True, backend=backend))
    device = renderer.engine.device
    vae = _random_vae(arch, device, renderer.engine.dtype)
    decode = renderer.models.compiler.decoder(vae, "random", ARCH_FAMILY[arch].value)
    size = DEFAULT_SIZE[arch]
    rows = max(1, min(batch, DECODE_PIXELS_PER_CALL // (size * size)))
    seconds = {}
    # the batch's rows, then one: dynamo specialises a dimension of size 1, so a single image
    # (the farm's warm-up loads each checkpoint with a one-job batch) is a graph of its own
    for n in dict.fromkeys((rows, 1)):
        latents = torch.randn(n, vae.config.latent_channels, size // 8, size // 8, device=device,
                              dtype=next(vae.parameters()).dtype)
        started = time.perf_counter()
        with torch.inference_mode():
            decode(latents)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[n] = round(time.perf_counter() - started, 2)
    report = renderer.models.compiler.report()
    renderer.close()
    return {"rows": rows, "first_call_s": seconds[rows], "seconds_by_rows": seconds, "compile": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_precompile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=sorted(DEFAULT_SIZE))
    parser.add_argument("--batch", type=int, required=True, help="jobs in the batch compiled")
    parser.add_argument("--checkpoints", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"))
    parser.add_argument("--no-fused-qkv", action="store_true")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--part", default="all", choices=sorted(PARTS),
                        help="all: UNet, checkpoints, one batch (and raw mode); vae: the VAE decoder alone")
    parser.add_argument("--raw-buckets", help="all: then measure raw mode at these batch sizes, e.g. 1,8,16")
    parser.add_argument("--raw-jobs", type=int, default=16, help="raw mode: jobs per batch size")
    args = parser.parse_args(argv)
    if args.part == "vae":
        result = compile_vae(args.arch, args.batch, args.root, args.backend)
        say(f"{args.arch}: VAE decoder compiled for {result['rows']} rows in {result['first_call_s']:.1f} s")
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    import torch

    from farm.engine.local import LocalRenderer
    from farm.models.compiled import CompileConfig
    from farm.records.paths import FarmPaths
    from jobs.bench_raw import gpu_turn
    from jobs.bench_report import bench_device, planned_jobs, run_batches

    started = time.perf_counter()

    def make() -> tuple[list[str], float]:  # beside the UNet's compile, which needs no checkpoint
        return bench_checkpoints(args.arch, args.root, args.checkpoints), time.perf_counter() - started

    with ThreadPoolExecutor(1, thread_name_prefix="make-checkpoints") as pool:
        making = pool.submit(make)
        latent = DEFAULT_SIZE[args.arch] // 8
        config = CompileConfig(enabled=True, backend=args.backend, fused_qkv=not args.no_fused_qkv,
                               warm_shapes=((args.arch, args.batch, latent, latent),))
        renderer = LocalRenderer(FarmPaths.under(args.root), bench_device(), compile=config)
        warmed = renderer.models.compiler.warm(renderer.engine.dtype)
        unet_s = time.perf_counter() - started
        names, made_s = making.result()  # its exception, if any, raised here
    jobs = planned_jobs(renderer, names[0], range(90_000, 90_000 + args.batch), DEFAULT_SIZE[args.arch],
                        args.steps, args.sampler)
    with gpu_turn(args.root):  # no other bench process's batch runs beside this one's
        if torch.cuda.is_available():  # raw mode's peak memory includes this batch's CUDA graph
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        run_batches(renderer, jobs, args.batch)
        batch_s = time.perf_counter() - t
        report = renderer.models.compiler.report()
        say(f"{args.arch}: UNet compiled in {unet_s:.1f} s ({warmed or 'not warmed'}), checkpoints made meanwhile "
            f"in {made_s:.1f} s; a first batch of {args.batch} (checkpoint load, VAE decoder trace) "
            f"in {batch_s:.1f} s")
        result = {"batch": args.batch, "make_checkpoints_s": round(made_s, 2), "unet_warm_s": round(unet_s, 2),
                  "warmed": warmed, "first_batch_s": round(batch_s, 2), "compile": report}
        if args.raw_buckets:
            result["raw"] = raw_here(args, names, renderer, batch_s)
        else:
            renderer.close()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    say(f"{args.arch}: reported; exiting without teardown")
    # The parent needs only that line, and inductor's cache files were written as each graph
    # compiled. Python's and CUDA's teardown of a process holding CUDA graphs and gigabytes of
    # pinned host memory is slow, and it crashed once (SIGSEGV, call 7): the bench's next phase
    # waits for this exit, so skip it.
    sys.stdout.flush()
    os._exit(0)


def raw_here(args: argparse.Namespace, names: list[str], renderer, first_s: float) -> dict:
    """Raw mode on this process's renderer, whose first batch (`first_s`) was the largest
    bucket's, then the switch timings: what the bench adopts (jobs.bench_raw.adopt_raw)."""
    from jobs.bench_raw import raw_and_switches
    from jobs.bench_report import BenchArgs

    buckets = tuple(sorted({int(b) for b in args.raw_buckets.split(",")}))
    if max(buckets) != args.batch:
        raise SystemExit(f"--raw-buckets: the largest ({max(buckets)}) must be --batch ({args.batch}), "
                         "the batch this process compiled and ran first")
    plan = BenchArgs(jobs=0, naive_jobs=0, raw_jobs=args.raw_jobs, buckets=buckets, checkpoints=args.checkpoints,
                     steps=args.steps, sampler=args.sampler, compile=True, compile_backend=args.backend, gpus=None,
                     worker_gpus=1.0, modes=("raw",), fused_qkv=not args.no_fused_qkv)
    run = ArchRun(args.arch, DEFAULT_SIZE[args.arch], plan, {"modes": []}, save=lambda _result: None)
    run.names = names
    info, switch = raw_and_switches(run, renderer, args.root, "compile process", first_s=first_s)
    return {"modes": run.result["modes"], "info": info, "switch": switch}


if __name__ == "__main__":
    raise SystemExit(main())
