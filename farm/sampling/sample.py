"""One sampling run as ComfyUI's KSampler / KSamplerAdvanced do it: slice the sigmas, scale the
initial noise onto the latent, run the named sampler."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from farm.errors import InvalidInputError
from farm.sampling.denoiser import CFGDenoiser
from farm.sampling.noise import NoiseFn, NoiseKind, make_noise_sampler
from farm.sampling.row_schedules import SkipFinishedRows
from farm.sampling.samplers import ROW_SCHEDULE_SAMPLERS, SAMPLER_NOISE, Callback, Denoiser, get_sampler


def slice_sigmas(sigmas: Tensor, start_step: int | None = None, end_step: int | None = None,
                 force_full_denoise: bool = False) -> Tensor:
    """KSamplerAdvanced's window on the schedule: stop at end_step (and jump to sigma 0 there
    when force_full_denoise), start at start_step. A window with no step left is returned
    empty, which `sample` answers with the latent unchanged (ComfyUI returns it as is)."""
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[:end_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return sigmas[:0]
        sigmas = sigmas[start_step:]
    return sigmas


def is_max_denoise(sigmas: Tensor, sigma_max: float) -> bool:
    """Does the run start from pure noise? ComfyUI's test: sigmas[0] is sigma_max to 1e-5 or above it."""
    sigma = float(sigmas[0])
    return math.isclose(sigma_max, sigma, rel_tol=1e-5) or sigma > sigma_max


def sample(denoiser: CFGDenoiser, latent_image: Tensor, noise: Tensor, sigmas: Tensor, sampler_name: str,
           callback: Callback | None = None, noise_sampler: NoiseFn | None = None,
           seeds: Sequence[int] | None = None) -> Tensor:
    """Run `sampler_name` from latent_image + noise at sigmas[0] down to sigmas[-1].

    sigmas: one schedule [S+1], or one per row [S+1, B] (farm.sampling.row_schedules) for the
    samplers of ROW_SCHEDULE_SAMPLERS. noise: unit Gaussian shaped like latent_image
    (initial_noise, or zeros for add_noise disabled). seeds: one per job block of rows, for
    the noise of ancestral and SDE samplers; or pass noise_sampler directly. Empty sigmas return latent_image unchanged; a single
    sigma returns the noised latent (no step runs), as in ComfyUI."""
    sampler = get_sampler(sampler_name)
    if sigmas.numel() == 0:
        return latent_image
    model: Denoiser = denoiser
    if sigmas.ndim == 2:
        if sampler_name not in ROW_SCHEDULE_SAMPLERS:
            raise InvalidInputError(f"sampler {sampler_name!r} runs one schedule for the whole batch; jobs with "
                                    "different steps must run as separate batches")
        model = SkipFinishedRows(denoiser)
    sigmas = sigmas.to(device=latent_image.device, dtype=torch.float32)
    noise = noise.to(device=latent_image.device, dtype=latent_image.dtype)

    # At the top of the schedule the latent is pure noise in VP terms: x_vp = noise, so in
    # sigma space x = noise * sqrt(1 + sigma^2). Below it (img2img, denoise < 1) the latent is
    # kept and noise of std sigma is added. With one schedule per row (a [S+1, B] table) the
    # test is made per row.
    if sigmas.ndim == 2:
        sigma_0 = sigmas[0].reshape(-1, *([1] * (latent_image.ndim - 1)))
        top = torch.tensor([is_max_denoise(column, denoiser.schedule.sigma_max) for column in sigmas.T.cpu()],
                           device=latent_image.device).reshape(sigma_0.shape)
        x = torch.where(top, noise * torch.sqrt(1.0 + sigma_0 ** 2.0), noise * sigma_0) + latent_image
    elif is_max_denoise(sigmas, denoiser.schedule.sigma_max):
        x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0) + latent_image
    else:
        x = noise * sigmas[0] + latent_image

    kind = SAMPLER_NOISE[sampler_name]
    if noise_sampler is None and kind is not NoiseKind.NONE:
        if seeds is None:
            raise InvalidInputError(f"sampler {sampler_name!r} adds noise at every step: pass seeds "
                             "(one per job block) or a noise_sampler so the run is reproducible")
        noise_sampler = make_noise_sampler(kind, x, seeds, sigmas)
    return sampler(model, x, sigmas, callback=callback, noise_sampler=noise_sampler)
