"""How many jobs of one batch key run as one call: per architecture and image size, from
measured throughput and the worker's free memory, never above the farm's max_batch.

Two limits, the smaller wins:
  throughput knee  a batch past the knee adds latency and memory for no images per second.
                   With a measured table for (architecture, latent width x height) (images/s
                   per batch size, e.g. `farm bench`'s raw modes in benchmarks/results/*.json)
                   the knee is the smallest batch within `knee` of the best rate. Without
                   one, a default cap per architecture at its native size (SD1.5 16 at 512 px,
                   SDXL 8 at 1024 px: the best batches measured on an H200, 2026-12-02),
                   scaled down in proportion to pixels for larger images.
  free memory      activations grow with the images in the call: an estimate per image
                   (bytes per pixel per architecture, the UNet with CFG and the VAE decode)
                   must fit `margin` of the device memory the worker reports free, less the
                   weights the batch would load first. Unknown free memory (a CPU worker):
                   no memory limit.
A job of unknown architecture or size gets max_batch, the limit before this sizer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

Shape = tuple[str, int, int]  # (architecture, latent width, latent height): the sizer's batch key
LATENT_FACTOR = 8  # pixels per latent cell, both families


@dataclass(frozen=True)
class ArchBatching:
    """What the sizer assumes of one architecture when nothing was measured."""

    bytes_per_pixel: float  # activation bytes per image pixel at the peak of a call (estimate)
    native_px: int  # image side the default cap is for
    default_cap: int  # images per call at the native size where the throughput levels off


# Per-pixel activation estimates: the VAE decode's full-resolution blocks dominate (128
# channels at every pixel, several live at once; SDXL's VAE runs in float32). Estimates, not
# measurements: override them per farm when a card runs out of memory or leaves it idle.
DEFAULT_ARCHS: dict[str, ArchBatching] = {
    "sd15": ArchBatching(bytes_per_pixel=1536.0, native_px=512, default_cap=16),
    "sdxl": ArchBatching(bytes_per_pixel=2048.0, native_px=1024, default_cap=8),
}


@dataclass(frozen=True)
class BatchSizer:
    max_batch: int = 8  # upper bound on jobs per call (the farm's --max-batch)
    margin: float = 0.8  # share of the reported free memory a call may plan to use
    knee: float = 0.98  # a measured batch within this share of the best images/s is enough
    archs: Mapping[str, ArchBatching] = field(default_factory=lambda: dict(DEFAULT_ARCHS))
    throughput: Mapping[Shape, Mapping[int, float]] = field(default_factory=dict)  # shape ->
    # {images per call: images per second}, measured

    def limit(self, arch: str, latent_w: int, latent_h: int, images_per_job: int = 1,
              free_bytes: int | None = None) -> int:
        """Jobs per call for this shape (each `images_per_job` images) on a worker with
        `free_bytes` free for activations (None: unknown). At least 1: a job too large for
        the memory estimate still runs, alone."""
        spec = self.archs.get(arch)
        if spec is None or latent_w <= 0 or latent_h <= 0:
            return self.max_batch
        per_job = max(1, images_per_job)
        images = self.knee_images((arch, latent_w, latent_h))
        fits = self.memory_images(arch, latent_w, latent_h, free_bytes)
        if fits is not None:
            images = min(images, fits)
        return max(1, min(self.max_batch, images // per_job))

    def knee_images(self, shape: Shape) -> int:
        """Images per call past which the throughput does not grow: measured, else the default."""
        table = self.throughput.get(shape)
        if table:
            best = max(table.values())
            return min(size for size, rate in table.items() if rate >= self.knee * best)
        arch, latent_w, latent_h = shape
        spec = self.archs[arch]
        native = (spec.native_px // LATENT_FACTOR) ** 2
        return max(1, int(spec.default_cap * native / (latent_w * latent_h)))

    def memory_images(self, arch: str, latent_w: int, latent_h: int, free_bytes: int | None) -> int | None:
        """Images whose activation estimate fits `margin` of `free_bytes` (None: unknown)."""
        if free_bytes is None:
            return None
        per_image = self.archs[arch].bytes_per_pixel * latent_w * latent_h * LATENT_FACTOR ** 2
        return int(max(0, free_bytes) * self.margin // per_image)


def throughput_from_bench(report: Mapping) -> dict[Shape, dict[int, float]]:
    """The measured tables in one `farm bench` JSON report: its raw modes (the engine alone,
    one batch size each) per architecture and square size. An architecture whose compiled
    UNet fell back to eager in raw mode is left out: its figures are not the engine the
    report meant to measure (a farm compiled where that one ran eager)."""
    tables: dict[Shape, dict[int, float]] = {}
    for result in report.get("results", ()):
        arch, size = result.get("arch"), result.get("size")
        if not arch or not size:
            continue
        raw_compile = (result.get("raw") or {}).get("compile") or {}
        if any(label.startswith("unet") and (entry or {}).get("fallback") for label, entry in raw_compile.items()):
            continue
        latent = int(size) // LATENT_FACTOR
        for mode in result.get("modes", ()):
            if str(mode.get("mode", "")).startswith("raw_b") and mode.get("images_per_s"):
                tables.setdefault((arch, latent, latent), {})[int(mode["batch"])] = float(mode["images_per_s"])
    return tables


def throughput_from_files(paths: Iterable[Path], device: str | None = None) -> dict[Shape, dict[int, float]]:
    """Tables from several bench reports; a later file's figure for the same point wins.
    `device` keeps only reports of GPUs whose name contains it ("H100"): a knee measured on
    one GPU model says little about another's."""
    tables: dict[Shape, dict[int, float]] = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        if device is not None and device.lower() not in str(report.get("device", "")).lower():
            continue
        for shape, table in throughput_from_bench(report).items():
            tables.setdefault(shape, {}).update(table)
    return tables
