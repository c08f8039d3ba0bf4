"""`farm bench`: what the engine renders per second on this machine's GPU, one job at a time
(ComfyUI's way) against queued jobs run as cross-job batches, with NVML utilisation.

Checkpoints are full-size random weights made on the spot (`farm make-checkpoint`): the
GPU's work does not depend on the weights' values. Every job has its own seed and its own
prompt, so text encoding, sampling, VAE decode and PNG writing all count."""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from farm.engine import JobContext, PlannedJob
from farm.engine.local import LocalRenderer
from farm.models.make import make_checkpoint
from farm.records.paths import FarmPaths
from farm.worker.nvml import NvmlSampler

DEFAULT_SIZE = {"sd15": 512, "sdxl": 1024, "tiny-sd15": 64, "tiny-sdxl": 64}
SUBJECTS = ("a lighthouse", "a red fox", "a city at night", "a bowl of fruit", "a mountain lake",
            "an old car", "a robot", "a sailing ship")


def workflow(ckpt: str, seed: int, size: int, steps: int, sampler: str) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": f"{SUBJECTS[seed % 8]}, photo #{seed}",
                                                         "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler, "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bench/img"}},
    }


@dataclass
class ModeResult:
    mode: str  # "one_by_one" or "batched_N"
    jobs: int
    seconds: float
    images_per_s: float
    nvml_util_mean: float | None  # percent of time a kernel ran


def _jobs(renderer: LocalRenderer, ckpt: str, seeds: range, size: int, steps: int, sampler: str) -> list[PlannedJob]:
    jobs = []
    for seed in seeds:
        p = renderer.prepare(workflow(ckpt, seed, size, steps, sampler))
        jobs.append(PlannedJob(JobContext(p.prompt_id, p.prompt), p.plan))
    return jobs


def _measure(renderer: LocalRenderer, mode: str, jobs: list[PlannedJob], batch: int) -> ModeResult:
    sampler = NvmlSampler()
    started = time.perf_counter()
    with sampler:
        for i in range(0, len(jobs), batch):
            outcomes = renderer.engine.run_batch(jobs[i:i + batch])
            assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    seconds = time.perf_counter() - started
    util = sampler.summary()
    return ModeResult(mode, len(jobs), seconds, len(jobs) / seconds, util.mean_util if util else None)


def bench_arch(arch: str, root: Path, jobs: int, batch: int, steps: int, sampler: str) -> dict:
    ckpt = f"{arch}.safetensors"
    path = root / "models" / "checkpoints" / ckpt
    if not path.exists():
        t = time.perf_counter()
        make_checkpoint(arch, path, seed=0)
        print(f"made {arch} in {time.perf_counter() - t:.1f} s", flush=True)
    renderer = LocalRenderer(FarmPaths.under(root))
    size = DEFAULT_SIZE[arch]
    t = time.perf_counter()
    renderer.engine.run_batch(_jobs(renderer, ckpt, range(10_000, 10_001), size, steps, sampler))
    load_s = time.perf_counter() - t
    renderer.engine.run_batch(_jobs(renderer, ckpt, range(10_001, 10_001 + batch), size, steps, sampler))  # warm b=N
    results = [
        _measure(renderer, "one_by_one", _jobs(renderer, ckpt, range(0, jobs), size, steps, sampler), 1),
        _measure(renderer, f"batched_{batch}", _jobs(renderer, ckpt, range(jobs, 2 * jobs), size, steps, sampler),
                 batch),
    ]
    renderer.close()
    for r in results:
        util = f"{r.nvml_util_mean:.0f}%" if r.nvml_util_mean is not None else "n/a"
        print(f"{arch} {size}px {steps} steps {sampler}: {r.mode:>11}: {r.images_per_s:.2f} images/s "
              f"({r.jobs} jobs in {r.seconds:.1f} s), NVML util {util}", flush=True)
    return {"arch": arch, "size": size, "steps": steps, "sampler": sampler, "first_job_with_load_s": load_s,
            "modes": [asdict(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=sorted(DEFAULT_SIZE), help="repeatable (default sd15)")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--root", type=Path, default=Path(".farm/bench"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    report = {"device": device, "torch": torch.__version__,
              "results": [bench_arch(a, args.root, args.jobs, args.batch, args.steps, args.sampler)
                          for a in (args.arch or ["sd15"])]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
