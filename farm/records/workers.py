"""GPU workers and devices as GET /workers and /system_stats show them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ResidencyTiers:
    """Which checkpoints a worker holds where (names as in models/checkpoints)."""

    vram: tuple[str, ...] = ()  # loaded on the GPU: a job using one starts at once
    pinned_ram: tuple[str, ...] = ()  # in pinned host memory: back on the GPU in ~0.1 s
    disk: tuple[str, ...] = ()  # on the node's local disk


@dataclass(frozen=True)
class WorkerStatus:
    """One GPU worker as GET /workers shows it."""

    worker_id: str
    node: str  # host name or Ray node id of the machine
    gpu_index: int | None  # CUDA index on that machine; None for a CPU worker
    gpu_name: str
    alive: bool  # False between a death and its replacement
    tiers: ResidencyTiers = field(default_factory=ResidencyTiers)
    backlog: int = 0  # prompts assigned to it and not finished
    running: tuple[str, ...] = ()  # prompt ids in its current call (more than one when batched)
    utilization: float | None = None  # GPU busy fraction 0..1 over the last sampling window (NVML)
    vram_used_bytes: int | None = None
    vram_total_bytes: int | None = None
    utilization_reason: str | None = None  # why utilization is None ("no GPU: a CPU worker", NVML's error)
    gpu_uuid: str | None = None  # NVML's id of the GPU (two workers may share one)


@dataclass(frozen=True)
class DeviceInfo:
    """One device of the cluster, in the shape of ComfyUI's /system_stats "devices"."""

    name: str  # e.g. "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync"
    type: str  # torch device type: "cuda", "cpu", "mps"
    index: int | None  # torch device index on its node
    vram_total: int  # bytes
    vram_free: int  # bytes
    torch_vram_total: int = 0  # bytes reserved by torch's caching allocator
    torch_vram_free: int = 0  # of those, bytes not in use by tensors
    node: str | None = None  # the machine it sits in (ComfyUI has one machine, so no such key)
    worker_id: str | None = None  # the worker that owns it
