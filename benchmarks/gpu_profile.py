"""Where an SD1.5 batch's time goes on the GPU, and what each speed lever buys: one device run.

    python3 benchmarks/gpu_profile.py --out DIR [--arch sd15] [--jobs 16] [--compile]

1. stages: one engine batch of --jobs batch-1 jobs (text, sampling, decode, PNG) under
   torch.profiler; kernel time per node, the GPU's idle gaps and which node they fall in.
2. levers: the UNet alone at 2 x jobs rows (CFG), milliseconds per call, eager and compiled,
   with channels_last, fused QKV, each SDPA backend, xformers (or why it cannot run), bf16;
   the output's difference to the fp16 baseline.
3. VAE: decode of --jobs latents, eager and channels_last; a 2048 px decode with and
   without tiling (time, peak memory).

Writes profile.json and the profiler's tables to --out. Full-size random weights, made here."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from farm.models.attention import SDPA, XFORMERS, apply_attention_backend, xformers_problem
from farm.models.load import load_checkpoint
from farm.models.make import make_checkpoint
from jobs.bench import DEFAULT_SIZE


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the CPU: a smoke run on tiny weights


def cuda_ms(fn, warm: int = 3, reps: int = 10) -> float:
    """Mean milliseconds of fn() on the GPU, timed with CUDA events after `warm` calls."""
    for _ in range(warm):
        fn()
    if DEVICE.type != "cuda":
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) * 1000 / reps
    _sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    _sync()
    return start.elapsed_time(end) / reps


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _empty() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def _reset_peak() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# -- 1. stages ------------------------------------------------------------------------------

def kernel_gaps(trace_file: Path) -> dict:
    """From a chrome trace: GPU busy fraction over the batch, and idle time (gaps between
    kernels over 50 us) attributed to the innermost "node ..." / "image writes" range that
    was open on the CPU when the gap began."""
    events = json.loads(trace_file.read_text())["traceEvents"]
    kernels = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e)
    ranges = [(e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
              if e.get("cat") == "user_annotation" and "dur" in e
              and (e["name"].startswith("node ") or e["name"] == "image writes")]
    kernel_time: dict[str, float] = {}
    if not kernels:
        return {"kernels": 0}
    busy, gaps, merged_end = 0.0, {}, kernels[0][0]
    for start, end in kernels:  # sorted by start: a gap opens where no kernel runs
        if start > merged_end + 50:
            where = [r for r in ranges if r[0] <= merged_end <= r[1]]
            name = min(where, key=lambda r: r[1] - r[0])[2] if where else "between nodes"
            gaps[name] = gaps.get(name, 0.0) + (start - merged_end) / 1e3
        busy += max(0.0, end - max(start, merged_end))
        merged_end = max(merged_end, end)
        mid = (start + end) / 2
        where = [r for r in ranges if r[0] <= mid <= r[1]]
        name = min(where, key=lambda r: r[1] - r[0])[2] if where else "outside nodes"
        kernel_time[name] = kernel_time.get(name, 0.0) + (end - start) / 1e3
    wall = merged_end - kernels[0][0]
    node_wall = {}
    for start, end, name in ranges:
        node_wall[name] = node_wall.get(name, 0.0) + (end - start) / 1e3
    return {"kernels": len(kernels), "gpu_span_ms": round(wall / 1e3, 1),
            "gpu_busy_fraction": round(busy / wall, 3) if wall else None,
            "kernel_ms_by_range": {k: round(v, 1) for k, v in sorted(kernel_time.items(), key=lambda kv: -kv[1])},
            "idle_ms_by_range": {k: round(v, 1) for k, v in sorted(gaps.items(), key=lambda kv: -kv[1])},
            "cpu_wall_ms_by_range": {k: round(v, 1) for k, v in sorted(node_wall.items(), key=lambda kv: -kv[1])}}


def stages(root: Path, ckpt: str, size: int, jobs: int, compile_on: bool, out: Path) -> dict:
    from farm.engine import JobContext, PlannedJob
    from farm.engine.local import LocalRenderer
    from farm.models.compiled import CompileConfig
    from farm.records.paths import FarmPaths
    from jobs.bench import workflow

    renderer = LocalRenderer(FarmPaths.under(root), DEVICE, compile=CompileConfig(enabled=compile_on))

    def batch(seed0: int) -> list:
        planned = []
        for seed in range(seed0, seed0 + jobs):
            p = renderer.prepare(workflow(ckpt, seed, size, 20, "euler"))
            planned.append(PlannedJob(JobContext(p.prompt_id, p.prompt), p.plan))
        return planned

    t = time.perf_counter()
    renderer.engine.run_batch(batch(0))
    first_s = time.perf_counter() - t
    timed = []
    for i in range(3):
        b = batch(1000 * (i + 1))
        _sync()
        t = time.perf_counter()
        renderer.engine.run_batch(b)
        timed.append(time.perf_counter() - t)
    b = batch(9000)
    trace = Path("/tmp/stages-trace.json")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        renderer.engine.run_batch(b)
    prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    for sort in ("self_cuda_time_total", "self_device_time_total"):
        try:
            table = averages.table(sort_by=sort, row_limit=30)
            break
        except Exception:  # the key's name changed across torch versions
            table = ""
    (out / f"stages-{'compiled' if compile_on else 'eager'}-kernels.txt").write_text(table)
    result = {"jobs": jobs, "compiled": compile_on, "first_batch_s": round(first_s, 2),
              "batch_s": [round(x, 3) for x in timed],
              "images_per_s": round(jobs / min(timed), 2), **kernel_gaps(trace)}
    renderer.models.unload_all()
    renderer.close()
    torch._dynamo.reset()
    _empty()
    return result


# -- 2. levers on the UNet ------------------------------------------------------------------

def unet_inputs(unet, rows: int, dtype) -> tuple:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, 4, 64, 64, generator=gen).to(DEVICE, dtype)
    t = torch.full((rows,), 500.0, device=DEVICE)
    ctx = torch.randn(rows, 77, unet.config.cross_attention_dim, generator=gen).to(DEVICE, dtype)
    return x, t, ctx


def levers(path: Path, jobs: int, compile_on: bool, extra: tuple[str, ...] = ()) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = 2 * jobs
    results: dict[str, dict] = {}
    loaded = load_checkpoint(path, DEVICE, torch.float16)
    unet = loaded.unet
    x, t, ctx = unet_inputs(unet, rows, torch.float16)

    def call(xx=None):
        return unet(xx if xx is not None else x, t, encoder_hidden_states=ctx, return_dict=False)[0]

    with torch.inference_mode():
        reference = call().clone()

        def measure(name: str, fn, out_fn=None) -> None:
            try:
                ms = cuda_ms(fn)
                diff = rel_l2((out_fn or fn)(), reference)
                results[name] = {"ms_per_call": round(ms, 2), "rel_l2_vs_fp16_eager": diff}
            except Exception as exc:  # a backend this GPU or build lacks: say so, go on
                results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(name, results[name], flush=True)

        measure("fp16 eager (sdpa auto)", call)
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            def with_backend(b=getattr(SDPBackend, backend)):
                with sdpa_kernel([b]):
                    return call()
            measure(f"fp16 eager sdpa={backend.lower()}", with_backend)
        # xformers where a build for this torch and GPU runs; else the reason it does not
        problem = xformers_problem(DEVICE, torch.float16)
        if problem is None:
            apply_attention_backend(unet, None, XFORMERS)
            measure("fp16 eager xformers", call)
            apply_attention_backend(unet, None, SDPA)
        else:
            results["fp16 eager xformers"] = {"error": f"not usable here: {problem}"}
            print("fp16 eager xformers", results["fp16 eager xformers"], flush=True)
        unet.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        measure("fp16 eager channels_last", lambda: call(xx=x_cl))
        try:
            unet.fuse_qkv_projections()
            measure("fp16 eager channels_last + fused qkv", lambda: call(xx=x_cl))
        except Exception as exc:
            results["fused qkv"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        if compile_on:
            from farm.models.compiled import CompileConfig, CompiledUNet

            def compiled(name: str, unet_to_compile, config: CompileConfig) -> None:
                runner = CompiledUNet(unet_to_compile, config, DEVICE, name)
                t0 = time.perf_counter()
                runner(x, t, ctx, None)
                _sync()
                results[f"{name}: first call s"] = {"s": round(time.perf_counter() - t0, 1)}
                measure(name, lambda: runner(x, t, ctx, None))

            compiled("fp16 compiled channels_last + fused qkv (the default)",
                     load_checkpoint(path, DEVICE, torch.float16).unet, CompileConfig(enabled=True))
            compiled("fp16 compiled channels_last", load_checkpoint(path, DEVICE, torch.float16).unet,
                     CompileConfig(enabled=True, fused_qkv=False))
            compiled("fp16 compiled NCHW", load_checkpoint(path, DEVICE, torch.float16).unet,
                     CompileConfig(enabled=True, channels_last=False, fused_qkv=False))
            if "inductor" in extra:
                # inductor options diffusers' guide suggests: 1x1 convolutions as matmuls, and
                # Triton kernels tuned by coordinate descent (longer compile)
                import torch._inductor.config as inductor_config

                with inductor_config.patch(conv_1x1_as_mm=True, coordinate_descent_tuning=True):
                    compiled("fp16 compiled channels_last + fused qkv + conv_1x1_as_mm + coordinate descent",
                             load_checkpoint(path, DEVICE, torch.float16).unet, CompileConfig(enabled=True))
        if "cudnn_benchmark" in extra:
            # cuDNN times its convolution algorithms for each shape and keeps the fastest
            # (the farm's shapes repeat: buckets). It may pick differently on another run.
            torch.backends.cudnn.benchmark = True
            measure("fp16 eager channels_last + fused qkv + cudnn.benchmark", lambda: call(xx=x_cl))
            if compile_on:
                compiled("fp16 compiled channels_last + fused qkv + cudnn.benchmark",
                         load_checkpoint(path, DEVICE, torch.float16).unet, CompileConfig(enabled=True))
            torch.backends.cudnn.benchmark = False
        unet = loaded = None  # frees the fp16 weights before the bf16 copy loads
        _empty()
        bf = load_checkpoint(path, DEVICE, torch.bfloat16).unet
        xb, tb, cb = x.bfloat16(), t, ctx.bfloat16()
        measure("bf16 eager", lambda: bf(xb, tb, encoder_hidden_states=cb, return_dict=False)[0])
        bf.to(memory_format=torch.channels_last)
        xbc = xb.contiguous(memory_format=torch.channels_last)
        measure("bf16 eager channels_last", lambda: bf(xbc, tb, encoder_hidden_states=cb, return_dict=False)[0])
        bf = None
    _empty()
    return {"rows": rows, "latent": "4x64x64", **results}


# -- 3. the VAE -----------------------------------------------------------------------------

def vae(path: Path, jobs: int) -> dict:
    loaded = load_checkpoint(path, DEVICE, torch.float16)
    v = loaded.vae
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(jobs, 4, 64, 64, generator=gen).to(DEVICE, v.dtype)
    out: dict[str, object] = {"dtype": str(v.dtype)}
    with torch.inference_mode():
        out["decode_ms eager"] = round(cuda_ms(lambda: v.decode(z).sample, warm=1, reps=3), 1)
        ref = v.decode(z).sample
        v.to(memory_format=torch.channels_last)
        zc = z.contiguous(memory_format=torch.channels_last)
        out["decode_ms channels_last"] = round(cuda_ms(lambda: v.decode(zc).sample, warm=1, reps=3), 1)
        out["channels_last rel_l2"] = rel_l2(v.decode(zc).sample, ref)
        v.to(memory_format=torch.contiguous_format)
        big = torch.randn(1, 4, 256, 256, generator=gen).to(DEVICE, v.dtype)
        for tiled in (False, True):
            (v.enable_tiling if tiled else v.disable_tiling)()
            _reset_peak()
            try:
                ms = cuda_ms(lambda: v.decode(big).sample, warm=1, reps=2)
                out[f"2048px decode tiled={tiled}"] = {"ms": round(ms, 1),
                                                       "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE.type == "cuda" else None}
            except torch.cuda.OutOfMemoryError:
                out[f"2048px decode tiled={tiled}"] = "out of memory"
                _empty()
        texts = loaded.text_encoders[0]
        ids = torch.randint(0, 49407, (2 * jobs, 77), generator=gen).to(DEVICE)
        out["clip_ms for 2 x jobs prompts"] = round(cuda_ms(lambda: texts(ids)[0], warm=2, reps=5), 1)
    return out


def png_ms(jobs: int) -> float:
    import numpy as np

    from farm.engine.images import PNG_COMPRESS_LEVEL, encode_png
    import io
    pixels = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    img, info = encode_png(pixels, {"prompt": "{}"})
    t = time.perf_counter()
    for _ in range(jobs):
        img.save(io.BytesIO(), format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return round((time.perf_counter() - t) * 1000 / jobs, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/profile-root"))
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--parts", default="stages,levers,vae",
                        help="any of stages (or stages_eager, stages_compiled), levers, vae")
    parser.add_argument("--extra-levers", default="",
                        help="levers also measured: cudnn_benchmark, inductor (conv_1x1_as_mm + coordinate descent)")
    parser.add_argument("--arch", default="sd15", help="tiny-sd15 for a CPU smoke run")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.root / "models" / "checkpoints" / f"{a.arch}.safetensors"
    if not path.exists():
        make_checkpoint(a.arch, path, seed=0)
    report: dict[str, object] = {"device": torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu", "torch": torch.__version__,
                                 "png_ms_per_512px_image": png_ms(8)}
    parts = a.parts.split(",")
    for name, fn in (("stages_eager", lambda: stages(a.root, path.name, DEFAULT_SIZE[a.arch], a.jobs, False, a.out)),
                     ("stages_compiled", lambda: stages(a.root, path.name, DEFAULT_SIZE[a.arch], a.jobs, True, a.out) if a.compile else None),
                     ("levers", lambda: levers(path, a.jobs, a.compile, tuple(filter(None, a.extra_levers.split(","))))),
                     ("vae", lambda: vae(path, a.jobs))):
        if name.split("_")[0] not in parts and name not in parts:
            continue
        t = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # one part failing must not lose the others' figures
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        print(f"== {name} ({time.perf_counter() - t:.0f} s)", json.dumps(report[name], indent=1), flush=True)
        (a.out / "profile.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
