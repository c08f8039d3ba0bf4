"""The sampler nodes' work: one job's KSampler call, or several jobs' calls as one batch.

A batch stacks the jobs' latents row-wise; each job keeps its own seed (initial noise and
per-step noise are drawn per job block), its own prompts and its own cfg, so a batched run
equals running the jobs one by one, to float tolerance."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from farm.errors import InvalidInputError
from farm.nodes.values import DiffusionModel, Latent
from farm.sampling import (
    CFGDenoiser,
    Conditioning,
    compute_sigmas,
    initial_noise,
    sample,
    slice_sigmas,
)
from farm.sampling.control import fill_uncond, rebase
from farm.sampling.inpaint import MaskedDenoiser, latent_mask
from farm.sampling.noise import indexed_noise
from farm.sampling.regions import (
    RegionalCFGDenoiser,
    SizeConditioning,
    add_opposite_areas,
    resolve_regions,
)
from farm.sampling.row_schedules import stack_schedules
from farm.sampling.samplers import ROW_SCHEDULE_SAMPLERS
from farm.sampling.stage import run_sampling
from farm.sampling.step_cache import StepCache
from farm.sampling.stop import checked_blocks

log = logging.getLogger(__name__)


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
        """What every call of one batch must have in common. Steps may differ where the
        sampler takes one schedule per row (and no step cache decides for the whole batch)."""
        steps = None if self.steps_may_differ() and self.schedule().numel() > 0 else self.steps
        return (id(self.model), steps, self.sampler_name, self.scheduler, self.denoise, self.add_noise,
                self.start_step, self.end_step, self.force_full_denoise, tuple(self.latent.samples.shape))

    def steps_may_differ(self) -> bool:
        # the regional denoiser switches entries on the batch's one sigma
        return (self.sampler_name in ROW_SCHEDULE_SAMPLERS and self.model.step_cache is None
                and self.positive.is_plain and self.negative.is_plain)

    def schedule(self) -> torch.Tensor:
        """This call's sigmas: the scheduler's for its steps and denoise, in its window."""
        sigmas = compute_sigmas(self.model.schedule, self.scheduler, self.steps, self.denoise, self.sampler_name)
        return slice_sigmas(sigmas, self.start_step, self.end_step, self.force_full_denoise)


def run_sampler_calls(rc, calls: list[SamplerCall]) -> list[Latent]:
    """Run compatible calls as one batched sampler run; incompatible ones separately."""
    groups: dict[tuple, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(call.shared_key(), []).append(i)
    results: list[Latent | None] = [None] * len(calls)
    for indices in groups.values():
        for i, latent in zip(indices, _run_batch(rc, [calls[i] for i in indices], indices)):
            results[i] = latent
    return results


def _run_batch(rc, calls: list[SamplerCall], inputs: list[int]) -> list[Latent]:
    """calls: one sampler run's; inputs: their places among the node's batched inputs (whose
    jobs hear this run's progress)."""
    first = calls[0]
    model = first.model
    rows = first.latent.samples.shape[0]  # latent rows per job
    # one schedule, or (jobs of different steps) one per row
    schedules = [c.schedule() for c in calls]
    sigmas = stack_schedules(schedules, rows)
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
    cfg = torch.tensor([c.cfg for c in calls], dtype=torch.float32).repeat_interleave(rows)
    denoiser = _denoiser(model, calls, shape, rows, cfg)
    step_cache = getattr(denoiser, "eps_fn", None)  # a StepCache when the workflow asked for EasyCache
    if any(c.latent.noise_mask is not None for c in calls):
        # rows without a mask get mask 1, which leaves them exactly as unmasked sampling would
        mask = torch.cat([torch.ones(shape) if c.latent.noise_mask is None else latent_mask(c.latent.noise_mask, shape)
                          for c in calls]).to(device)
        denoiser = MaskedDenoiser(denoiser, latent_in, noise.to(device), mask)

    # each job hears its own steps: a shorter schedule's job stops hearing once it has ended
    by_steps: dict[int, list[int]] = {}
    for schedule, k in zip(schedules, inputs):
        by_steps.setdefault(len(schedule) - 1, []).append(k)

    def on_step(info) -> None:
        for steps, members in by_steps.items():
            if info.i < steps:
                rc.progress(info.i + 1, steps, members)

    noise = noise.to(device)

    def loop() -> torch.Tensor:
        # LoRAs are patched into the resident UNet on the sampling thread, which runs one
        # loop at a time: a batch sampling beside it never sees the patched weights
        # Within a step, an interrupt is honoured before each UNet block (a step at a large
        # size is seconds on a CPU); a compiled UNet runs as one graph, so only between steps.
        blocks = [model.unet] if model.runner is None else []
        with model.patched(), torch.inference_mode(), checked_blocks(blocks, rc.check_interrupt):
            out = sample(denoiser, latent_in, noise, sigmas, first.sampler_name, callback=on_step, seeds=seeds)
        if isinstance(step_cache, StepCache):
            log.info("%s (%s)", step_cache.summary(), model.checkpoint_name)
        return (out / model.latent_scale).float()

    # The loop runs on the device's sampling thread; the copy to the host waits here, so
    # the next batch's loop can start meanwhile.
    out = run_sampling(device, loop).cpu()
    # like ComfyUI's, the output keeps the input's noise mask and batch index
    return [dataclasses.replace(c.latent, samples=block) for c, block in zip(calls, out.split(rows))]


def _denoiser(model: DiffusionModel, calls: list[SamplerCall], shape: tuple, rows: int, cfg: torch.Tensor):
    """Plain prompts (one entry each, whole latent, whole schedule) take the CFGDenoiser;
    areas, timestep ranges or combined entries take the regional one."""
    def ids(side: str):
        return lambda entry: _time_ids(model, entry, shape, side)

    if all(c.positive.is_plain and c.negative.is_plain for c in calls):
        positive = _side([c.positive for c in calls], rows, [ids("positive")(c.positive) for c in calls])
        negatives = [fill_uncond(c.positive, c.negative) for c in calls]
        negative = _side(negatives, rows, [ids("negative")(n) for n in negatives])
        eps_fn = model.eps
        if model.step_cache is not None:
            eps_fn = StepCache(model.eps, model.step_cache, model.schedule, rows * len(calls))
        return CFGDenoiser(eps_fn, model.schedule, positive, negative, cfg)
    if model.step_cache is not None:
        log.warning("EasyCache is not applied to areas, timestep ranges or combined conditioning: every step runs")
    if any(e.control for c in calls for side in (c.positive, c.negative) for e in side.entries()):
        raise InvalidInputError("a ControlNet together with areas, timestep ranges or combined conditioning "
                                "is not supported yet: apply the ControlNet to a plain prompt")
    lh, lw = shape[-2:]
    positive = [resolve_regions(c.positive, lh, lw, model.schedule, ids("positive")) for c in calls]
    negative = [resolve_regions(c.negative, lh, lw, model.schedule, ids("negative")) for c in calls]
    for pos, neg in zip(positive, negative):
        add_opposite_areas(pos, neg)  # ComfyUI's order: positive's areas first, then negative's
        add_opposite_areas(neg, pos)
    return RegionalCFGDenoiser(model.eps, model.schedule, positive, negative, cfg, rows)


def _time_ids(model: DiffusionModel, entry: Conditioning, latent_shape: tuple, side: str) -> torch.Tensor | None:
    """SDXL's added ids: (height, width, crop top, crop left, target height, target width);
    the refiner's: (height, width, crop top, crop left, aesthetic score). What the entry
    leaves unset is the latent's image size, crop 0 and the refiner's scores 6 (positive) and
    2.5 (negative), as ComfyUI takes them."""
    if not model.needs_time_ids:
        return None
    size = entry.size or SizeConditioning()
    height = latent_shape[-2] * 8 if size.height is None else size.height
    width = latent_shape[-1] * 8 if size.width is None else size.width
    if getattr(model, "aesthetic_ids", False):
        score = size.aesthetic_score if size.aesthetic_score is not None else (2.5 if side == "negative" else 6.0)
        ids = [height, width, size.crop_h, size.crop_w, score]
    else:
        ids = [height, width, size.crop_h, size.crop_w,
               height if size.target_height is None else size.target_height,
               width if size.target_width is None else size.target_width]
    return torch.tensor([ids], dtype=torch.float32)


def _side(conds: list[Conditioning], rows: int, time_ids: list[torch.Tensor | None]) -> Conditioning:
    """One side (positive or negative) of every job, one row per latent row. Prompts of
    different lengths are repeated to a common token count (exact for attention)."""
    if len(conds) == 1 and conds[0].embeds.shape[0] == 1:
        c = conds[0]
        return Conditioning(c.embeds, c.pooled, time_ids[0], c.control)
    tokens = math.lcm(*(c.embeds.shape[1] for c in conds))
    embeds = torch.cat([c.embeds[:1].repeat(rows, tokens // c.embeds.shape[1], 1) for c in conds])
    pooled = None if conds[0].pooled is None else torch.cat([c.pooled[:1].repeat(rows, 1) for c in conds])
    ids = None if time_ids[0] is None else torch.cat([t.repeat(rows, 1) for t in time_ids])
    # each job's ControlNets act on that job's rows only
    control = tuple(h for j, c in enumerate(conds) for h in rebase(c.control, j * rows, rows))
    return Conditioning(embeds, pooled, ids, control)
