"""What `farm bench` runs and reports: the workflow and arguments every mode shares, one
ModeResult per measured mode, the lines it prints as it goes (each stamped with the seconds
since the bench started, so a run cut short by its time limit still shows where the time
went), the SIGTERM that ends it, and the PNG of GPU utilisation over time."""
from __future__ import annotations

import os
import platform
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from farm.engine import JobContext, PlannedJob
from farm.engine.local import LocalRenderer
from farm.models.compiled import CompileConfig
from farm.models.make import make_checkpoint
from farm.worker.nvml import NvmlSampler, gpu_identity

_STARTED = time.perf_counter()

DEFAULT_SIZE = {"sd15": 512, "sdxl": 1024, "tiny-sd15": 64, "tiny-sdxl": 64}
SUBJECTS = ("a lighthouse", "a red fox", "a city at night", "a bowl of fruit", "a mountain lake",
            "an old car", "a robot", "a sailing ship")
MODES = ("raw", "naive", "farm")


def bench_device() -> torch.device:
    """Where raw mode, the switch timings and the attention probe run: the GPU when there is one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bench_checkpoints(arch: str, root: Path, count: int) -> list[str]:
    """`count` checkpoint files of `arch` under root/models/checkpoints: the first made with
    random weights (unless there), the others hard links of it under other names."""
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


def planned_jobs(renderer: LocalRenderer, ckpt: str, seeds: range, size: int, steps: int,
                 sampler: str) -> list[PlannedJob]:
    jobs = []
    for seed in seeds:
        p = renderer.prepare(workflow(ckpt, seed, size, steps, sampler))
        jobs.append(PlannedJob(JobContext(p.prompt_id, p.prompt), p.plan))
    return jobs


def run_batches(renderer: LocalRenderer, jobs: list[PlannedJob], batch: int) -> None:
    for i in range(0, len(jobs), batch):
        outcomes = renderer.engine.run_batch(jobs[i:i + batch])
        failed = [str(o.error) for o in outcomes if not o.ok]
        if failed:
            raise RuntimeError(f"raw batch of {batch} failed: {failed[0]}")


@dataclass(frozen=True)
class ArchPlan:
    """What one architecture's run measures when the command line does not say."""

    jobs: int  # farm mode's queue
    naive_jobs: int
    raw_jobs: int  # jobs per bucket in raw mode (rounded up to whole batches)
    buckets: tuple[int, ...]  # jobs per batch tried in raw mode
    checkpoints: int


# Sized for both architectures, cold compiles included, to fit one 10-minute call on an
# H100 (an estimate from call 7's stamps, 510-530 s; not yet measured whole): there an SD1.5
# job takes about 0.14 s in a batch of 16 and an SDXL one 0.85 s (SDXL's batches of 8 ran no
# faster than 4). The largest bucket is the farm's batch (the batch sizer's default cap):
# a batch of 32 SD1.5 jobs is 64 UNet rows, past farm.models.compiled.GRAPH_SPLIT_ROWS, and
# would cost a second cold compile (about 100 s) for 2% more images/s.
ARCH_PLANS = {
    "sd15": ArchPlan(jobs=128, naive_jobs=16, raw_jobs=16, buckets=(1, 8, 16), checkpoints=3),
    "sdxl": ArchPlan(jobs=24, naive_jobs=4, raw_jobs=4, buckets=(1, 4, 8), checkpoints=2),
}
DEFAULT_PLAN = ArchPlan(jobs=64, naive_jobs=16, raw_jobs=32, buckets=(1, 8, 16), checkpoints=3)  # tiny archs


@dataclass(frozen=True)
class BenchArgs(ArchPlan):
    """One architecture's plan and what every architecture of the run shares."""

    steps: int
    sampler: str
    compile: bool
    compile_backend: str  # "inductor"; "aot_eager" runs the compile path without generating code (CPU tests)
    gpus: int | None
    worker_gpus: float
    modes: tuple[str, ...]
    fused_qkv: bool = True  # CompileConfig.fused_qkv; `farm bench --no-fused-qkv` measures without

    def compile_config(self, **also) -> CompileConfig:
        """The compiled-sampling settings every mode of the bench uses."""
        return CompileConfig(**{"enabled": self.compile, "backend": self.compile_backend,
                                "fused_qkv": self.fused_qkv, **also})


@dataclass
class ArchRun:
    """One architecture's part of a bench: its arguments, checkpoints and the result it
    fills in (the JSON's entry under "results"), saved after every measured mode."""

    arch: str
    size: int  # image side, pixels
    args: BenchArgs
    result: dict
    save: Callable[[dict], None]
    names: list[str] = field(default_factory=list)  # checkpoint files, the first made, the rest links

    @property
    def label(self) -> str:
        return f"{self.arch} {self.size}px {self.args.steps} steps {self.args.sampler}"

    def record(self, mode: "ModeResult", quiet: bool = False) -> None:
        if not quiet:
            say_mode(self.label, mode)
        self.result["modes"].append(asdict(mode))
        by_mode = {m["mode"]: m for m in self.result["modes"]}
        raw = by_mode.get(f"raw_b{self.result.get('farm_batch')}")
        if "farm" in by_mode and raw:
            self.result["farm_vs_raw_same_batch"] = by_mode["farm"]["images_per_s"] / raw["images_per_s"]
        self.save(self.result)


class BenchStopped(BaseException):
    """SIGTERM (a time limit's `timeout`): stop measuring, keep and plot what was measured.
    A BaseException, as KeyboardInterrupt is: raised wherever the main thread happens to be,
    it must pass through the library's `except Exception` handlers (one in validation turned
    it into "Exception when validating inner node: signal 15" and exit status 2)."""


def _stop(signum: int, _frame) -> None:
    raise BenchStopped(f"signal {signum}")


def stop_on_sigterm() -> None:
    """SIGTERM raises BenchStopped in the main thread. Call again after ray.init, which
    installs a handler of its own (it logs a stack and aborts)."""
    signal.signal(signal.SIGTERM, _stop)


def say(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {message}", flush=True)


@dataclass
class ModeResult:
    mode: str  # "raw_b8", "naive", "farm"
    jobs: int
    seconds: float
    images_per_s: float
    batch: int  # jobs per engine call (the largest, for the farm)
    nvml_util_mean: float | None  # percent of time a kernel ran
    nvml_util_p5: float | None
    nvml_samples: int = 0
    latency_p50_s: float | None = None  # submit -> result, farm modes
    latency_p99_s: float | None = None
    peak_vram_gib: float | None = None  # raw modes: torch's peak allocation in the batch
    # Farm modes, the steady state: from the first job finished (files written: the pipeline
    # is full) to the last job handed to a worker (until then a next batch always waits),
    # seconds since the mode started. The ramp before and the drain after are in the
    # whole-run figures above.
    steady_window_s: tuple[float, float] | None = None
    steady_util_mean: float | None = None
    steady_util_p5: float | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s, util %), plotted, not printed


def summarize(mode: str, jobs: int, seconds: float, batch: int, nvml: NvmlSampler, **extra) -> ModeResult:
    util = nvml.summary()
    return ModeResult(mode, jobs, seconds, jobs / seconds if seconds > 0 else 0.0, batch,
                      util.mean_util if util else None, util.p5_util if util else None,
                      util.samples if util else 0, timeline=nvml.timeline(), **extra)


def say_mode(label: str, r: ModeResult) -> None:
    """One line per measured mode; label: "sd15 512px 20 steps euler"."""
    util = (f"NVML mean {r.nvml_util_mean:.0f}% p5 {r.nvml_util_p5:.0f}%" if r.nvml_util_mean is not None
            else "NVML n/a")
    lat = f", latency p50 {r.latency_p50_s:.2f} s p99 {r.latency_p99_s:.2f} s" if r.latency_p50_s is not None else ""
    mem = f", peak {r.peak_vram_gib:.1f} GiB" if r.peak_vram_gib is not None else ""
    if r.steady_util_mean is not None:
        util += f" (steady {r.steady_window_s[0]:.1f}-{r.steady_window_s[1]:.1f} s: {r.steady_util_mean:.0f}% " \
                f"p5 {r.steady_util_p5:.0f}%)"
    say(f"{label}: {r.mode:>8}: {r.images_per_s:.2f} images/s "
          f"({r.jobs} jobs in {r.seconds:.1f} s, batch {r.batch}), {util}{lat}{mem}")


def say_fallbacks(where: str, compile_report: dict) -> None:
    """A compiled UNet or VAE that fell back to eager makes every figure after it an eager
    one: say so on the bench's output, not only in its JSON."""
    for label, entry in compile_report.items():
        if isinstance(entry, dict) and entry.get("fallback"):
            say(f"warning: {where}: compiled {label} fell back to eager: {entry['fallback']}")


def device_label() -> tuple[str, str | None]:
    if torch.cuda.is_available():
        identity = gpu_identity(0)
        return torch.cuda.get_device_name(0), identity[1] if identity else None
    return platform.processor() or platform.machine() or "cpu", None


def plot(report: dict, path: Path) -> Path | None:
    """Utilisation over time, naive against farm (and the raw batch the farm used), one
    panel per architecture."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = report["results"]
    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.2 * len(results)), squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        for m in res["modes"]:
            if m["mode"] in ("naive", "farm") or m["mode"] == f"raw_b{res.get('farm_batch')}":
                ts = [p[0] for p in m["timeline"]]
                us = [p[1] for p in m["timeline"]]
                label = (f"{m['mode']}: {m['images_per_s']:.2f} img/s, mean {m['nvml_util_mean'] or 0:.0f}% "
                         f"p5 {m['nvml_util_p5'] or 0:.0f}%")
                ax.plot(ts, us, label=label, linewidth=0.8)
                if m.get("steady_window_s"):
                    ax.axvspan(*m["steady_window_s"], color="tab:green", alpha=0.08)
        ax.set_title(f"{res['arch']} {res['size']}px, {res['steps']} steps {res['sampler']} on {report['device']}"
                     " (shaded: the farm's steady state)")
        ax.set_xlabel("seconds since the mode started")
        ax.set_ylabel("NVML GPU busy %")
        ax.set_ylim(-2, 102)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
