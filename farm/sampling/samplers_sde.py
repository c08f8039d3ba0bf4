"""SDE samplers of the DPM-Solver++ family (Lu et al. 2022, arXiv:2211.01095), written for
eps-prediction models, where the VP signal scale alpha is 1 in k-diffusion's sigma space and
the half log-SNR is lambda = -log sigma.

Their noise should be Brownian (farm.sampling.noise.BrownianNoiseSampler): dpmpp_sde queries
nested intervals within one step and relies on the increments being consistent."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from farm.sampling.noise import BrownianNoiseSampler, NoiseFn
from farm.sampling.samplers_base import Callback, Denoiser, ancestral_step, report


def _brownian_fallback(x: Tensor, sigmas: Tensor) -> NoiseFn:
    """A Brownian sampler with a random seed, for callers that pass none (as ComfyUI without a seed)."""
    return BrownianNoiseSampler(x, [int(torch.randint(0, 2**63 - 1, []))], sigmas)


@torch.no_grad()
def sample_dpmpp_sde(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                     callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """DPM-Solver++ (stochastic, two stages per step, r = 1/2, eta = 1), after k-diffusion."""
    if len(sigmas) <= 1:
        return x
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or _brownian_fallback(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = lambda_t - lambda_s
        lambda_mid = lambda_s + h / 2
        sigma_mid = lambda_mid.neg().exp()
        # Stage 1: an ancestral exponential-integrator step to the midpoint sigma_mid.
        sd, su = ancestral_step(sigmas[i], sigma_mid)
        h_ = sd.log().neg() - lambda_s
        x_2 = (-h_).exp() * x - (-h_).expm1() * denoised
        x_2 = x_2 + noise_sampler(sigmas[i], sigma_mid) * su
        denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
        # Stage 2: the full step. Its data term mixes the two predictions with weight
        # fac = 1 / (2r), which for r = 1/2 is 1: the midpoint's prediction alone. The noise is
        # drawn on the whole interval of the same Brownian path.
        sd, su = ancestral_step(sigmas[i], sigmas[i + 1])
        h_ = sd.log().neg() - lambda_s
        x = (-h_).exp() * x - (-h_).expm1() * denoised_2
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                        callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """DPM-Solver++(2M) SDE with the midpoint correction and eta = 1."""
    if len(sigmas) <= 1:
        return x
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or _brownian_fallback(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            # With eta = 1 the SDE step keeps exp(-h) of x's noise, doubles the decay of the
            # data term (h_eta = 2h), and adds fresh noise of std sigma_next * sqrt(1 - e^{-2h}).
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * 2
            x = sigmas[i + 1] / sigmas[i] * (-h).exp() * x + (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                        callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """DPM-Solver++(3M) SDE with eta = 1."""
    if len(sigmas) <= 1:
        return x
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or _brownian_fallback(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2 = None, None  # predictions of the previous two steps
    h, h_1, h_2 = None, None, None  # this step's and the previous two steps' lengths in lambda
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * 2
            x = sigmas[i + 1] / sigmas[i] * (-h).exp() * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                # Third order: first and second divided differences of D over the last 3 steps.
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / r)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
