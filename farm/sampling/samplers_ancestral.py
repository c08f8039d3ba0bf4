"""Ancestral samplers: each step descends below the target sigma deterministically, then adds
fresh Gaussian noise back up to it. The noise comes from `noise_sampler(sigma, sigma_next)`;
pass a seeded one (farm.sampling.noise.NoiseSampler) for reproducible, batch-invariant runs."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from farm.sampling.noise import NoiseFn, unseeded_noise_sampler
from farm.sampling.samplers_base import (
    Callback,
    Denoiser,
    ancestral_step,
    at,
    every_row,
    keep_finished,
    model_sigma,
    report,
    to_d,
)


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                           callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Ancestral sampling with Euler steps (k-diffusion; Ho et al. 2020's posterior split).
    Takes one schedule per row."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        to_zero = sigma_down == 0
        if every_row(to_zero):
            x_next = denoised
        else:
            d = to_d(x, sigma, denoised)
            noise = noise_sampler(sigma, sigma_next)
            x_next = torch.where(to_zero, denoised, x + d * (sigma_down - sigma) + noise * sigma_up)
        x = keep_finished(x_next, x, sigma_next)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                           callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 midpoint steps (Lu et al. 2022, via k-diffusion).
    Takes one schedule per row."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        d = to_d(x, sigma, denoised)
        to_zero = sigma_down == 0
        x_euler = x + d * (sigma_down - sigma)
        if every_row(to_zero):
            x_next = x_euler
        else:
            # Midpoint in log sigma between sigma and sigma_down, then the noise back to sigma_next.
            sigma_mid = sigma.log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = keep_finished(x + d * (sigma_mid - sigma), x, sigma_next)
            d_2 = to_d(x_2, sigma_mid, model(x_2, model_sigma(sigma_mid, x, sigma_next), **extra_args))
            x_mid = x + d_2 * (sigma_down - sigma)
            x_next = torch.where(to_zero, x_euler, x_mid + noise_sampler(sigma, sigma_next) * sigma_up)
        x = keep_finished(x_next, x, sigma_next)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                              callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps, Lu et al. (2022) arXiv:2211.01095.
    Takes one schedule per row."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        to_zero = sigma_down == 0
        x_euler = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if every_row(to_zero):
            x_next = x_euler
        else:
            # Two exponential-integrator stages in t = -log sigma: to the midpoint s, then
            # from the start to sigma_down with the midpoint's prediction.
            t, t_next = sigma.log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + h / 2
            x_2 = keep_finished((s.neg().exp() / t.neg().exp()) * x - (-h / 2).expm1() * denoised, x, sigma_next)
            denoised_2 = model(x_2, model_sigma(s.neg().exp(), x, sigma_next), **extra_args)
            x_2s = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
            x_next = torch.where(to_zero, x_euler, x_2s)
        noised = sigma_next > 0
        if not every_row(~noised):
            x_next = torch.where(noised, x_next + noise_sampler(sigma, sigma_next) * sigma_up, x_next)
        x = keep_finished(x_next, x, sigma_next)
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
               callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Latent Consistency Model sampling (Luo et al. 2023): jump to D(x), re-noise to the next sigma.
    Takes one schedule per row."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or unseeded_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        x_next = denoised
        noised = sigma_next > 0
        if not every_row(~noised):
            x_next = torch.where(noised, noise_sampler(sigma, sigma_next) * sigma_next + x_next, x_next)
        x = keep_finished(x_next, x, sigma_next)
    return x
