"""Synthetic job traces for `farm simulate`.

The default trace: 10,000 jobs over 8 checkpoints whose popularity follows Zipf(1.1);
checkpoints alternate SDXL (1024 px) and SD1.5 (512 px), the most popular being SDXL. Each
checkpoint has three workflow templates (20, 25 or 30 steps, euler/normal), so there are
three batch keys per checkpoint; a job picks one uniformly. Jobs arrive one at a time as a
Poisson process whose rate offers `load` (0.9) times the farm's capacity, counted at the
batch limit (GPU seconds per image at batch 8, summed over workers): a busy farm, which
only keeps up if it batches. `--arrivals bursty` submits seed sweeps instead: a burst is
one template repeated (geometric size, mean `mean_burst` jobs, all at the same instant),
bursts arriving as a Poisson process with the same offered load. 8 workers, each with
12 GB of VRAM for weights (room for two SDXL UNets), 16 GB of pinned host RAM and 200 GB
of local disk; batch limit 8.

`loras` > 0 gives each checkpoint that many LoRAs: every template then comes without a LoRA
and with each of them (its own batch key, as LoRA names are constants of the plan), so a
job names a LoRA set with probability loras / (loras + 1). With 0 (the default) the trace
is exactly the one without LoRAs.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass

from farm.errors import ConfigError
from farm.records.residency import LoraSet
from farm.scheduler.costs import ARCHS, ArchProfile, batch_s, job_estimates

STEP_CHOICES = (20, 25, 30)


@dataclass(frozen=True)
class TraceSpec:
    jobs: int = 10_000
    workers: int = 8
    checkpoints: int = 8
    zipf: float = 1.1  # popularity of checkpoint rank r is proportional to r ** -zipf
    seed: int = 0
    load: float = 0.9  # offered GPU work per second / farm capacity, at the batch limit
    arrivals: str = "poisson"  # "poisson" (single jobs) or "bursty" (seed sweeps)
    mean_burst: float = 6.0  # mean jobs per sweep when bursty
    max_batch: int = 8
    gpu_gb: float = 12.0  # VRAM for weights per worker
    pinned_gb: float = 16.0  # pinned host RAM per worker
    disk_gb: float = 200.0  # local disk cache per worker
    loras: int = 0  # LoRAs per checkpoint (0: jobs apply none)

    def __post_init__(self) -> None:
        at_least_one = {"jobs": self.jobs, "workers": self.workers, "checkpoints": self.checkpoints,
                        "max_batch": self.max_batch}
        for name, value in at_least_one.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: give at least 1")
        positive = {"load": self.load, "mean_burst": self.mean_burst, "gpu_gb": self.gpu_gb}
        for name, value in positive.items():
            if not value > 0 or math.isinf(value):
                raise ConfigError(f"--{name.replace('_', '-')} {value}: give a positive number")
        for name, value in {"zipf": self.zipf, "pinned_gb": self.pinned_gb, "disk_gb": self.disk_gb,
                            "loras": self.loras}.items():
            if not value >= 0 or math.isinf(value):
                raise ConfigError(f"--{name.replace('_', '-')} {value}: give a number of 0 or more")
        if self.arrivals not in ("poisson", "bursty"):
            raise ConfigError(f"--arrivals {self.arrivals!r}: give poisson or bursty")


@dataclass(frozen=True)
class Template:
    """A workflow template: the jobs made from it differ only in seed and prompt. Templates
    that differ only in steps share a batch key (the farm batches them: euler takes one
    schedule per row)."""
    batch_key: str
    checkpoint: str
    arch: ArchProfile
    steps: int
    est_run_s: float  # seconds alone (what upstream tells the dispatcher)
    est_extra_s: float  # seconds each further job adds to a batch
    image_s: float  # GPU seconds per image at the batch limit (the cheapest it can run)
    loras: LoraSet = ()  # LoRA set its jobs apply


@dataclass(frozen=True)
class TraceJob:
    job_id: str
    arrival_s: float
    template: Template


def checkpoint_names(spec: TraceSpec) -> list[tuple[str, ArchProfile]]:
    """Checkpoints by popularity rank; even ranks SDXL, odd ranks SD1.5."""
    return [(f"ckpt{rank}-{arch.name}", arch)
            for rank in range(spec.checkpoints)
            for arch in [ARCHS["sdxl"] if rank % 2 == 0 else ARCHS["sd15"]]]


def templates(spec: TraceSpec) -> list[list[Template]]:
    """Per checkpoint (by rank), its templates."""
    result = []
    for name, arch in checkpoint_names(spec):
        row = []
        variants: list[LoraSet] = [()] + [((f"{name}-lora{i}.safetensors", 1.0, 1.0),) for i in range(spec.loras)]
        for steps in STEP_CHOICES:
            run_s, extra_s = job_estimates(arch, steps, spec.max_batch)
            for loras in variants:
                lora_part = "".join(f"|{n}@{m}" for n, m, _ in loras)
                # euler takes one schedule per row: jobs of different steps share a batch key
                row.append(Template(f"{name}|euler|normal|{arch.resolution}{lora_part}", name, arch, steps,
                                    run_s, extra_s, batch_s(arch, steps, spec.max_batch) / spec.max_batch, loras))
        result.append(row)
    return result


def make_trace(spec: TraceSpec) -> list[TraceJob]:
    """The jobs of a trace, in arrival order (deterministic for a given spec)."""
    rng = random.Random(spec.seed)
    table = templates(spec)
    weights = [(rank + 1) ** -spec.zipf for rank in range(spec.checkpoints)]
    cum = list(itertools.accumulate(weights))
    mean_image_s = sum(w * sum(t.image_s for t in row) / len(row)
                       for w, row in zip(weights, table)) / cum[-1]
    job_rate = spec.load * spec.workers / mean_image_s  # jobs per second
    burst = spec.mean_burst if spec.arrivals == "bursty" else 1.0
    if spec.arrivals not in ("bursty", "poisson"):
        raise ConfigError(f"arrivals must be 'bursty' or 'poisson', not {spec.arrivals!r}")
    jobs: list[TraceJob] = []
    now = 0.0
    while len(jobs) < spec.jobs:
        rank = rng.choices(range(spec.checkpoints), cum_weights=cum)[0]
        template = rng.choice(table[rank])
        # Geometric burst size with mean `burst` (1 for Poisson arrivals).
        size = 1 if burst <= 1 else 1 + int(math.log(1 - rng.random()) / math.log(1 - 1 / burst))
        for _ in range(min(size, spec.jobs - len(jobs))):
            jobs.append(TraceJob(f"job{len(jobs):07d}", now, template))
        now += rng.expovariate(job_rate / burst)
    return jobs


def describe(spec: TraceSpec, jobs: list[TraceJob]) -> dict:
    """The trace as the JSON "trace" object: the spec plus what was drawn."""
    per_ckpt: dict[str, int] = {}
    for job in jobs:
        per_ckpt[job.template.checkpoint] = per_ckpt.get(job.template.checkpoint, 0) + 1
    return {**asdict(spec),
            "span_s": round(jobs[-1].arrival_s, 3) if jobs else 0.0,
            "work_s": round(sum(j.template.image_s for j in jobs), 3),
            "jobs_per_checkpoint": per_ckpt}
