"""GPU time of a batch, from the figures measured in DESIGN.md (H100, fp16, SDPA).

The trace simulator uses these as the truth; the estimates a job carries (est_run_s,
est_extra_s) are the straight line through batch 1 and the batch limit, which is what the
dispatcher would be told upstream. Batch sizes between measured points are interpolated
linearly, beyond the last point extrapolated along the last segment.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ArchProfile:
    name: str
    resolution: int  # square image side in pixels
    unet_step_ms: tuple[tuple[int, float], ...]  # (batch, ms per step with CFG), measured
    vae_decode_ms: tuple[tuple[int, float], ...]  # (batch, ms per decode)
    checkpoint_bytes: int  # size of the UNet weights file (what a load moves)


# VAE decode at 1024 px was measured at batch 1 only (92 ms); its batch curve is the 512 px
# curve (24 ms b1, 69 ms b4) scaled by 92/24: decode cost grows with pixels.
ARCHS: dict[str, ArchProfile] = {
    "sd15": ArchProfile("sd15", 512, ((1, 32.6), (4, 42.6), (8, 54.6)),
                        ((1, 24.0), (4, 69.0)), 1_700_000_000),
    "sdxl": ArchProfile("sdxl", 1024, ((1, 81.6), (4, 155.0), (8, 298.0)),
                        ((1, 92.0), (4, 69.0 * 92.0 / 24.0)), 5_100_000_000),
}


def interpolate(points: tuple[tuple[int, float], ...], x: float) -> float:
    """Piecewise-linear through measured (x, y) points; linear beyond both ends."""
    if len(points) == 1:
        return points[0][1] * x / points[0][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1 or (x1, y1) == points[-1]:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise AssertionError("unreachable")


def batch_s(arch: ArchProfile, steps: int, size: int) -> float:
    """Seconds of GPU time for one batched call: `steps` UNet steps plus one VAE decode."""
    return (steps * interpolate(arch.unet_step_ms, size) + interpolate(arch.vae_decode_ms, size)) / 1000


def mixed_batch_s(arch: ArchProfile, steps: Sequence[int]) -> float:
    """batch_s for jobs of different step counts in one call: a job's row leaves the UNet
    call once its schedule has ended (farm.sampling.row_schedules), so each stretch of steps
    runs at the size of the rows still in it."""
    ordered = sorted(steps)
    unet_ms, done = 0.0, 0
    for k, upto in enumerate(ordered):
        unet_ms += (upto - done) * interpolate(arch.unet_step_ms, len(ordered) - k)
        done = upto
    return (unet_ms + interpolate(arch.vae_decode_ms, len(ordered))) / 1000


DEFAULT_FETCH_BYTES_PER_S = 200e6  # a model source over the network (S3 to EC2, one stream)


def fetch_s(size_bytes: int, bytes_per_s: float = DEFAULT_FETCH_BYTES_PER_S) -> float:
    """Seconds to fetch a file its worker's node lacks from the farm's model source, on top
    of the cold load that follows (placement: farm.scheduler.fleet.Fleet.switch_s)."""
    return max(0, size_bytes) / bytes_per_s if bytes_per_s > 0 else 0.0


def job_estimates(arch: ArchProfile, steps: int, max_batch: int) -> tuple[float, float]:
    """(est_run_s, est_extra_s) for a job: seconds alone, and seconds each further job adds
    (the chord from batch 1 to the batch limit)."""
    alone = batch_s(arch, steps, 1)
    if max_batch <= 1:
        return alone, alone
    return alone, (batch_s(arch, steps, max_batch) - alone) / (max_batch - 1)


# Seconds to patch one LoRA into (or restore it out of) a resident UNet, per LoRA entering
# or leaving the applied set: farm.models.lora saves the touched weights and adds the
# deltas in place, a few hundred small matmuls (benchmarks/lora_switch.py times it). Far
# below any checkpoint load from disk (0.37 s for SD1.5 from the page cache, DESIGN.md),
# so it breaks ties between workers that hold the checkpoint and never outweighs residency.
LORA_SWITCH_S = 0.05


def lora_switch_s(applied: tuple, wanted: tuple, per_lora_s: float = LORA_SWITCH_S) -> float:
    """Seconds to go from the LoRA set a worker applied last to the one a job needs: none
    when equal, else `per_lora_s` for every (name, strengths) entry that leaves or enters."""
    if applied == wanted:
        return 0.0
    return per_lora_s * len(set(applied) ^ set(wanted))
