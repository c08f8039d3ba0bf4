"""Where a worker holds each checkpoint: GPU memory, pinned host RAM, local disk.

A checkpoint comes from the nearest tier that holds it (STORE: none does; read it from the
models folder cold). Loading puts it into every tier that has room, so a checkpoint evicted
from VRAM usually comes back from pinned RAM (10-35x faster than disk, DESIGN.md).

Eviction in each tier is GreedyDual-Size: an entry's credit is the tier's inflation
clock at its last use plus its reload cost per GB; the lowest credit goes (the least
recently used among equals), and the clock rises to the victim's credit. Entries not used
for a while fall behind newer ones (recency), while those that are slow to bring back
survive longer (cost). Entries the dispatcher asks to keep go last.

Reload costs are measured, not constants: `LoadCostModel` keeps an exponential moving
average of observed load seconds per GB for each (source tier, size class), seeded from
DESIGN.md's figures.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum

from farm.errors import CheckpointError

GB = 1e9

# The LoRAs a plan applies to its checkpoint: (lora_name, strength_model, strength_clip) per
# loader, in plan order (strength_clip None for a model-only loader, a strength None when a
# link feeds it); () applies none. Two jobs with equal sets sample with equal weights.
LoraSet = tuple[tuple[str, float | None, float | None], ...]


def lora_set(entries) -> LoraSet:
    """A LoraSet from its JSON form (lists) or a tuple already."""
    return tuple((str(name), None if model is None else float(model), None if clip is None else float(clip))
                 for name, model, clip in entries)


class Tier(str, Enum):
    GPU = "gpu"
    PINNED = "pinned"
    DISK = "disk"
    STORE = "store"  # held by no tier of this worker: read from the models folder, cold


CACHED_TIERS = (Tier.GPU, Tier.PINNED, Tier.DISK)  # nearest first

# Seconds to bring a UNet file to the GPU from each tier, DESIGN.md (H100): the SD1.5 file
# is 1.7 GB, the SDXL file 5.1 GB. DISK assumes a file this worker read before is still in
# the page cache; STORE is a cold read. Sizes in between are interpolated, others
# extrapolated in proportion to size.
SEED_LOAD_S: dict[Tier, tuple[tuple[float, float], tuple[float, float]]] = {
    Tier.PINNED: ((1.7 * GB, 0.035), (5.1 * GB, 0.10)),
    Tier.DISK: ((1.7 * GB, 0.37), (5.1 * GB, 1.1)),
    Tier.STORE: ((1.7 * GB, 1.17), (5.1 * GB, 3.7)),
}


def seed_load_s(tier: Tier, size_bytes: int) -> float:
    """DESIGN.md's measured load time for a file of this size (0 for GPU: nothing to load)."""
    if tier is Tier.GPU:
        return 0.0
    (b0, s0), (b1, s1) = SEED_LOAD_S[tier]
    if size_bytes <= b0:
        return s0 * size_bytes / b0
    return s0 + (s1 - s0) * (size_bytes - b0) / (b1 - b0)


def size_class(size_bytes: int) -> int:
    """Checkpoints within a factor of two share a class (power-of-two bucket)."""
    return max(0, int(math.log2(max(size_bytes, 1))))


class LoadCostModel:
    """Expected load seconds per (tier, size class), learned from what workers observe."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha  # weight of the newest observation
        self._s_per_gb: dict[tuple[Tier, int], float] = {}  # (tier, size class) -> EMA

    def observe(self, tier: Tier, size_bytes: int, seconds: float) -> None:
        if tier is Tier.GPU or size_bytes <= 0:
            return
        key = (tier, size_class(size_bytes))
        rate = seconds / (size_bytes / GB)
        old = self._s_per_gb.get(key)
        self._s_per_gb[key] = rate if old is None else old + self.alpha * (rate - old)

    def estimate_s(self, tier: Tier, size_bytes: int) -> float:
        if tier is Tier.GPU:
            return 0.0
        rate = self._s_per_gb.get((tier, size_class(size_bytes)))
        return seed_load_s(tier, size_bytes) if rate is None else rate * size_bytes / GB


@dataclass(frozen=True)
class ResidencyReport:
    """What a worker holds, sent with every request for work."""
    gpu: frozenset[str] = frozenset()  # checkpoints in VRAM
    pinned: frozenset[str] = frozenset()  # ... in pinned host RAM
    disk: frozenset[str] = frozenset()  # ... on local disk
    gpu_free_bytes: int = 0  # VRAM budget for weights not in use
    evict_order: tuple[tuple[str, int], ...] = ()  # VRAM (checkpoint, bytes), least valuable first
    lora_checkpoint: str | None = None  # checkpoint the last batch patched LoRAs into
    loras: LoraSet = ()  # ... and the LoRA set it applied (its files are read and bound)
    free_vram_bytes: int | None = None  # device memory free for activations; None: unknown

    def applied_loras(self, checkpoint: str | None) -> LoraSet:
        """The LoRA set this worker last applied to `checkpoint`, while that is in VRAM."""
        if checkpoint is None or checkpoint != self.lora_checkpoint or checkpoint not in self.gpu:
            return ()
        return self.loras
    # checkpoint files on the worker's node, reported where a model source is configured (a
    # file not among them is fetched first); None: every file is on every node
    on_node: frozenset[str] | None = None

    def needs_fetch(self, checkpoint: str) -> bool:
        """A load of `checkpoint` here must first fetch its file from the model source."""
        return self.on_node is not None and checkpoint not in self.on_node and self.source(checkpoint) is Tier.STORE

    def victims(self, checkpoint: str, size_bytes: int,
                keep: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """What loading `checkpoint` into VRAM would evict (as Residency.load chooses)."""
        if checkpoint in self.gpu:
            return ()
        need, out = size_bytes - self.gpu_free_bytes, []
        order = [e for e in self.evict_order if e[0] not in keep] + \
                [e for e in self.evict_order if e[0] in keep]
        for name, size in order:
            if need <= 0:
                break
            out.append(name)
            need -= size
        return tuple(out)

    def after_load(self, checkpoint: str, size_bytes: int,
                   keep: frozenset[str] = frozenset()) -> "ResidencyReport":
        """What the worker will hold once it has loaded `checkpoint` (the dispatcher's
        expectation until the worker's next report)."""
        if checkpoint in self.gpu:
            return self
        victims = set(self.victims(checkpoint, size_bytes, keep))
        freed = sum(size for name, size in self.evict_order if name in victims)
        order = tuple(e for e in self.evict_order if e[0] not in victims) + ((checkpoint, size_bytes),)
        return dataclasses.replace(self, gpu=(self.gpu - victims) | {checkpoint},
                                   gpu_free_bytes=self.gpu_free_bytes + freed - size_bytes,
                                   evict_order=order)

    def source(self, checkpoint: str) -> Tier:
        """The tier a load of `checkpoint` would come from on this worker."""
        if checkpoint in self.gpu:
            return Tier.GPU
        if checkpoint in self.pinned:
            return Tier.PINNED
        if checkpoint in self.disk:
            return Tier.DISK
        return Tier.STORE


@dataclass(frozen=True)
class Eviction:
    checkpoint: str
    tier: Tier  # the tier it left (it may still be held further down)


@dataclass(frozen=True)
class LoadOutcome:
    source: Tier  # where the weights came from (GPU: already resident, nothing loaded)
    evicted: tuple[Eviction, ...]  # what made room, nearest tier first


@dataclass
class _TierCache:
    """One tier's entries under a byte budget, evicted by GreedyDual-Size credit."""
    tier: Tier
    budget_bytes: int
    sizes: dict[str, int] = field(default_factory=dict)  # checkpoint -> bytes
    credit: dict[str, float] = field(default_factory=dict)  # checkpoint -> credit
    used: dict[str, int] = field(default_factory=dict)  # checkpoint -> use count at last touch
    inflation: float = 0.0  # the GreedyDual clock: credit of the last victim
    uses: int = 0  # touches so far; breaks credit ties in favour of the recent

    def eviction_order(self) -> list[str]:
        """Least valuable first: lowest credit, then least recently used."""
        return sorted(self.credit, key=lambda c: (self.credit[c], self.used[c]))

    @property
    def used_bytes(self) -> int:
        return sum(self.sizes.values())

    def touch(self, checkpoint: str, size_bytes: int, reload_s: float,
              keep: frozenset[str]) -> list[str]:
        """Hold `checkpoint` (refreshing its credit); returns what was evicted for room,
        taking entries outside `keep` first."""
        evicted: list[str] = []
        if checkpoint not in self.sizes:
            evicted = self.evict_to_fit(size_bytes, keep, spare_kept=False)
            self.sizes[checkpoint] = size_bytes
        self.credit[checkpoint] = self.inflation + reload_s / max(size_bytes / GB, 1e-9)
        self.uses += 1
        self.used[checkpoint] = self.uses
        return evicted

    def evict_to_fit(self, extra_bytes: int, keep: frozenset[str], spare_kept: bool) -> list[str]:
        """Evict until `extra_bytes` more fit the budget, least valuable first, entries
        outside `keep` before those in it; with `spare_kept`, never those in it (then it may
        stay over budget). Returns the evicted."""
        evicted: list[str] = []
        while self.sizes and self.used_bytes + extra_bytes > self.budget_bytes:
            order = self.eviction_order()
            victim = next((c for c in order if c not in keep), None if spare_kept else order[0])
            if victim is None:
                break
            self.inflation = self.credit.pop(victim)
            del self.sizes[victim], self.used[victim]
            evicted.append(victim)
        return evicted


class Residency:
    """The residency tiers of one worker. The worker calls `load` before each batch."""

    def __init__(self, gpu_bytes: int, pinned_bytes: int, disk_bytes: int,
                 costs: LoadCostModel | None = None):
        self.costs = costs or LoadCostModel()
        self._tiers = {Tier.GPU: _TierCache(Tier.GPU, gpu_bytes),
                       Tier.PINNED: _TierCache(Tier.PINNED, pinned_bytes),
                       Tier.DISK: _TierCache(Tier.DISK, disk_bytes)}

    def source(self, checkpoint: str) -> Tier:
        for tier in CACHED_TIERS:
            if checkpoint in self._tiers[tier].sizes:
                return tier
        return Tier.STORE

    def load(self, checkpoint: str, size_bytes: int, keep: frozenset[str] = frozenset()) -> LoadOutcome:
        """Make `checkpoint` resident in VRAM (and in every lower tier with room). `keep`:
        checkpoints the dispatcher's plan wants here; they are evicted last."""
        gpu = self._tiers[Tier.GPU]
        if size_bytes > gpu.budget_bytes:
            raise CheckpointError(
                f"{checkpoint} needs {size_bytes / GB:.1f} GB but the GPU budget is "
                f"{gpu.budget_bytes / GB:.1f} GB; raise the worker's VRAM budget")
        source = self.source(checkpoint)
        evicted: dict[Tier, list[str]] = {}
        # Bottom up, so each tier's reload cost is that of the tier below as it will be.
        below = Tier.STORE
        for tier in reversed(CACHED_TIERS):
            cache = self._tiers[tier]
            if size_bytes <= cache.budget_bytes:
                reload_s = self.costs.estimate_s(below, size_bytes)
                evicted[tier] = cache.touch(checkpoint, size_bytes, reload_s, keep)
                below = tier
        return LoadOutcome(source=source, evicted=tuple(
            Eviction(c, tier) for tier in CACHED_TIERS for c in evicted.get(tier, ())))

    def set_aside(self, tier: Tier, nbytes: int, keep: frozenset[str] = frozenset()) -> list[str]:
        """`nbytes` of the tier go to something else for good (a compiled UNet's stage):
        its budget shrinks, and what no longer fits leaves now, outside `keep` first.
        Returns the checkpoints evicted."""
        cache = self._tiers[tier]
        cache.budget_bytes = max(0, cache.budget_bytes - nbytes)
        return cache.evict_to_fit(0, keep, spare_kept=True)  # what the running batch uses stays

    def forget(self, checkpoint: str) -> None:
        """`checkpoint` is held nowhere (its load failed): no tier may claim it."""
        for cache in self._tiers.values():
            cache.sizes.pop(checkpoint, None)
            cache.credit.pop(checkpoint, None)
            cache.used.pop(checkpoint, None)

    def report(self) -> ResidencyReport:
        gpu = self._tiers[Tier.GPU]
        order = gpu.eviction_order()
        return ResidencyReport(gpu=frozenset(gpu.sizes),
                               pinned=frozenset(self._tiers[Tier.PINNED].sizes),
                               disk=frozenset(self._tiers[Tier.DISK].sizes),
                               gpu_free_bytes=gpu.budget_bytes - gpu.used_bytes,
                               evict_order=tuple((name, gpu.sizes[name]) for name in order))
