"""The tiers' plain records (budgets, one measured load): no torch, so that the farm's
configuration and a worker's reports unpickle in processes that never load a model (the
dispatcher, the CLI). farm.models.tiers, which moves the tensors, re-exports them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.records.residency import Tier

GiB = 1024**3


@dataclass(frozen=True)
class TierConfig:
    """Budgets in bytes; None derives one when the worker starts: device memory is what
    is free minus `vram_headroom_bytes` (a CPU worker's is a share of host RAM), pinned
    RAM a share of available host RAM split over the host's workers, disk unbounded
    unless checkpoints are copied to `local_dir`."""

    vram_bytes: int | None = None
    vram_headroom_bytes: int = 2 * GiB  # activations, the VAE decode's peak, allocator slack
    pinned_bytes: int | None = None
    host_share: float = 0.5  # of available host RAM, for this host's workers together
    local_dir: Path | None = None  # local copies of checkpoints whose models folder is remote (NFS)
    disk_bytes: int | None = None  # budget of local_dir; None: its free space less 10%


@dataclass(frozen=True)
class TierBudgets:
    vram_bytes: int
    pinned_bytes: int
    disk_bytes: int


@dataclass(frozen=True)
class TierMove:
    """One measured load into device memory (tests and metrics read them)."""

    name: str
    source: Tier  # PINNED, DISK (read before: page cache or local copy), STORE (cold)
    nbytes: int
    seconds: float
