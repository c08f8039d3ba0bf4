"""The sampler nodes' work: one job's KSampler call, or several jobs' calls as one batch.

A batch stacks the jobs' latents row-wise; each job keeps its own seed (initial noise and
per-step noise are drawn per job block), its own prompts and its own cfg, so a batched run
equals running the jobs one by one, to float tolerance."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from farm.nodes.values import DiffusionModel, Latent
from farm.sampling import (
    CFGDenoiser,
    Conditioning,
    compute_sigmas,
    initial_noise,
    sample,
    slice_sigmas,
)
from farm.sampling.inpaint import MaskedDenoiser, latent_mask
from farm.sampling.noise import indexed_noise
from farm.sampling.stage import run_sampling
from farm.sampling.stop import checked_blocks


@dataclass(frozen=True, eq=False)
class SamplerCall:
    """One job's sampler inputs, KSampler and KSamplerAdvanced alike."""

    model: DiffusionModel
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    positive: Conditioning
    negative: Conditioning
    latent: Latent
    denoise: float = 1.0
    add_noise: bool = True
    start_step: int | None = None  # KSamplerAdvanced's window on the schedule
    end_step: int | None = None
    force_full_denoise: bool = False

    def shared_key(self) -> tuple:
        """What every call of one batch must have in common."""
        return (id(self.model), self.steps, self.sampler_name, self.scheduler, self.denoise, self.add_noise,
                self.start_step, self.end_step, self.force_full_denoise, tuple(self.latent.samples.shape))


def run_sampler_calls(rc, calls: list[SamplerCall]) -> list[Latent]:
    """Run compatible calls as one batched sampler run; incompatible ones separately."""
    groups: dict[tuple, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(call.shared_key(), []).append(i)
    results: list[Latent | None] = [None] * len(calls)
    for indices in groups.values():
        for i, latent in zip(indices, _run_batch(rc, [calls[i] for i in indices])):
            results[i] = latent
    return results


def _run_batch(rc, calls: list[SamplerCall]) -> list[Latent]:
    first = calls[0]
    model = first.model
    sigmas = compute_sigmas(model.schedule, first.scheduler, first.steps, first.denoise, first.sampler_name)
    sigmas = slice_sigmas(sigmas, first.start_step, first.end_step, first.force_full_denoise)
    rows = first.latent.samples.shape[0]  # latent rows per job
    shape = tuple(first.latent.samples.shape)
    seeds = [c.seed for c in calls]
    if not first.add_noise:
        noise = torch.zeros((rows * len(calls), *shape[1:]))
    elif any(c.latent.batch_index is not None for c in calls):
        noise = torch.cat([initial_noise(shape, [c.seed]) if c.latent.batch_index is None
                           else indexed_noise(shape, c.seed, c.latent.batch_index) for c in calls])
    else:
        noise = initial_noise(shape, seeds)

    # The sampler works on the UNet's latent scale on the model's device, in float32.
    device = model.device
    latent_in = torch.cat([c.latent.samples for c in calls]).to(device) * model.latent_scale
    time_ids = _time_ids(shape) if model.needs_time_ids else None
    positive = _side([c.positive for c in calls], rows, time_ids)
    negative = _side([c.negative for c in calls], rows, time_ids)
    cfg = torch.tensor([c.cfg for c in calls], dtype=torch.float32).repeat_interleave(rows)
    denoiser = CFGDenoiser(model.eps, model.schedule, positive, negative, cfg)
    if any(c.latent.noise_mask is not None for c in calls):
        # rows without a mask get mask 1, which leaves them exactly as unmasked sampling would
        mask = torch.cat([torch.ones(shape) if c.latent.noise_mask is None else latent_mask(c.latent.noise_mask, shape)
                          for c in calls]).to(device)
        denoiser = MaskedDenoiser(denoiser, latent_in, noise.to(device), mask)

    total = max(len(sigmas) - 1, 0)

    def on_step(info) -> None:
        rc.progress(info.i + 1, total)

    noise = noise.to(device)

    def loop() -> torch.Tensor:
        # LoRAs are patched into the resident UNet on the sampling thread, which runs one
        # loop at a time: a batch sampling beside it never sees the patched weights
        # Within a step, an interrupt is honoured before each UNet block (a step at a large
        # size is seconds on a CPU); a compiled UNet runs as one graph, so only between steps.
        blocks = [model.unet] if model.runner is None else []
        with model.patched(), torch.inference_mode(), checked_blocks(blocks, rc.check_interrupt):
            out = sample(denoiser, latent_in, noise, sigmas, first.sampler_name, callback=on_step, seeds=seeds)
        return (out / model.latent_scale).float()

    # The loop runs on the device's sampling thread; the copy to the host waits here, so
    # the next batch's loop can start meanwhile.
    out = run_sampling(device, loop).cpu()
    # like ComfyUI's, the output keeps the input's noise mask and batch index
    return [dataclasses.replace(c.latent, samples=block) for c, block in zip(calls, out.split(rows))]


def _time_ids(latent_shape: tuple) -> torch.Tensor:
    """SDXL's size conditioning: ComfyUI takes the image size from the latent when the
    conditioning names none: (height, width, crop top, crop left, target height, width)."""
    h, w = latent_shape[-2] * 8, latent_shape[-1] * 8
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)


def _side(conds: list[Conditioning], rows: int, time_ids: torch.Tensor | None) -> Conditioning:
    """One side (positive or negative) of every job, one row per latent row. Prompts of
    different lengths are repeated to a common token count (exact for attention)."""
    if len(conds) == 1 and conds[0].embeds.shape[0] == 1:
        c = conds[0]
        return Conditioning(c.embeds, c.pooled, time_ids)
    tokens = math.lcm(*(c.embeds.shape[1] for c in conds))
    embeds = torch.cat([c.embeds[:1].repeat(rows, tokens // c.embeds.shape[1], 1) for c in conds])
    pooled = None if conds[0].pooled is None else torch.cat([c.pooled[:1].repeat(rows, 1) for c in conds])
    ids = None if time_ids is None else time_ids.repeat(len(conds) * rows, 1)
    return Conditioning(embeds, pooled, ids)
