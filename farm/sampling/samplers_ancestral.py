"""Ancestral samplers: each step descends below the target sigma deterministically, then adds
fresh Gaussian noise back up to it. The noise comes from `noise_sampler(sigma, sigma_next)`;
pass a seeded one (farm.sampling.noise.NoiseSampler) for reproducible, batch-invariant runs."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from farm.sampling.noise import NoiseFn, unseeded_noise_sampler
from farm.sampling.samplers_base import Callback, Denoiser, ancestral_step, report, to_d


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                           callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Ancestral sampling with Euler steps (k-diffusion; Ho et al. 2020's posterior split)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        report(callback, i, x, sigmas, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                           callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 midpoint steps (Lu et al. 2022, via k-diffusion)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        report(callback, i, x, sigmas, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            # Midpoint in log sigma between sigma and sigma_down, then the noise back to sigma_next.
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                              callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps, Lu et al. (2022) arXiv:2211.01095."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        report(callback, i, x, sigmas, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            # Two exponential-integrator stages in t = -log sigma: to the midpoint s, then
            # from the start to sigma_down with the midpoint's prediction.
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + h / 2
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp() * s_in, **extra_args)
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
               callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Latent Consistency Model sampling (Luo et al. 2023): jump to D(x), re-noise to the next sigma."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] + x
    return x
