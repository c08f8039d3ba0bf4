"""What each new batch size costs the compiled UNet: a first call per size, in a given order.

    TORCH_LOGS=recompiles python3 benchmarks/compile_shapes.py --arch sd15 --jobs 1,32 [--out DIR]

A random-weight UNet of the architecture, compiled as a farm worker compiles it
(farm.models.compiled.CompiledUNet: the batch dimension marked dynamic, rows padded to
buckets), is called once per entry of --jobs, in that order (CFG: two UNet rows a job). Each
first call's seconds says whether that size reused the graph (a CUDA graph recording: about
a second) or compiled again (a minute on an H100); with TORCH_LOGS=recompiles torch names the
guard that failed, and TORCH_LOGS=recompiles,dynamic the line of code each guard comes from.

On a CPU (2026-12-07, torch 2.11, tiny-sd15, --backend aot_eager, --jobs 32,16,1; the log is
benchmarks/results/compile-shapes-20261207-cpu.log) each of the three sizes compiled: the
guards were diffusers' Upsample2D test `hidden_states.shape[0] >= 64` (64 rows) and the CPU
convolution's layout choice (16 rows). The first is the 64-row recompile seen on an H100;
dynamo guards on the model's code, so the backend does not change it."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from farm.models.compiled import CompileConfig, CompiledUNet, _dummy_inputs, _random_unet
from jobs.bench_report import DEFAULT_SIZE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sd15", choices=sorted(DEFAULT_SIZE))
    parser.add_argument("--jobs", default="1,32", help="batch sizes (jobs) in call order")
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"))
    parser.add_argument("--out", type=Path, help="a JSON of the timings here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    latent = DEFAULT_SIZE[args.arch] // 8
    unet = _random_unet(args.arch, device, dtype)
    runner = CompiledUNet(unet, CompileConfig(enabled=True, backend=args.backend), device, args.arch)
    calls = []
    for jobs in (int(j) for j in args.jobs.split(",")):
        inputs = _dummy_inputs(unet, 2 * jobs, latent, latent)
        started = time.perf_counter()
        with torch.inference_mode():
            runner(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        calls.append({"jobs": jobs, "rows": 2 * jobs, "first_call_s": round(time.perf_counter() - started, 2)})
        print(f"{args.arch} {jobs} job(s), {2 * jobs} rows: first call {calls[-1]['first_call_s']:.1f} s", flush=True)
    if runner.stats.fallback:
        print(f"fell back to eager: {runner.stats.fallback}")
    report = {"arch": args.arch, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "backend": args.backend, "calls": calls, "fallback": runner.stats.fallback}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"compile-shapes-{args.arch}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
