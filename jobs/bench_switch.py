"""`farm bench`'s switch timings: how long a worker takes to bring back a checkpoint it
evicted from device memory, by the tier it comes from.

A TieredModelProvider (the farm worker's own) gets a device budget that holds one of the
bench's checkpoints, so loading the other evicts the first to pinned host RAM; switching
back is then one host-to-device copy (the issue's target: SD1.5 < 0.1 s, SDXL < 0.25 s on
an H100/H200). The first load of each checkpoint is the disk read. On a CPU the device
memory is host RAM, so a switch back costs nothing: the CPU run only exercises the path."""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

from farm.models.store import ModelFolders
from farm.models.tiers import TieredModelProvider
from farm.records.residency import Residency

ROUNDS = 3  # switches back and forth timed per tier


def measure_switches(models: Path, names: list[str], device: torch.device) -> dict:
    """Seconds per load into device memory, by source tier: {"pinned": {...}, "disk": {...}}."""
    if len(names) < 2:
        return {"skipped": "needs two checkpoints (--checkpoints 2 or more)"}
    first, second = names[:2]
    sizes = [(models / "checkpoints" / n).stat().st_size for n in (first, second)]
    budget = max(sizes) + min(sizes) // 2  # one checkpoint fits, two do not
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    provider = TieredModelProvider(ModelFolders(models), device, dtype, Residency(budget, 4 * max(sizes), 1 << 50))
    try:
        for _ in range(ROUNDS + 1):
            for name in (first, second):
                provider.checkpoint(name)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
        by_tier: dict[str, list[float]] = {}
        for move in provider.moves:
            by_tier.setdefault(move.source.value, []).append(move.seconds)
        return {tier: {"loads": len(s), "median_s": round(statistics.median(s), 4), "max_s": round(max(s), 4),
                       "gib": round(sizes[0] / 2**30, 2)}
                for tier, s in by_tier.items()}
    finally:
        provider.unload()  # the pinned copies go with the provider
