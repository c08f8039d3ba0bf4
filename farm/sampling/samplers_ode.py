"""Deterministic samplers: solvers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

Each is one function with k-diffusion's signature; `noise_sampler` is accepted for a uniform
interface and ignored. All state lives in locals, so one function can serve any number of
concurrent runs."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.polynomial import polynomial as P
from torch import Tensor

from farm.sampling.noise import NoiseFn
from farm.sampling.samplers_base import Callback, Denoiser, at, every_row, keep_finished, model_sigma, report, to_d


@torch.no_grad()
def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Euler steps, Karras et al. (2022) Algorithm 2 without churn. Takes one schedule per row."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        x = keep_finished(x + to_d(x, sigma, denoised) * (sigma_next - sigma), x, sigma_next)
    return x


@torch.no_grad()
def sample_heun(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Heun steps, Karras et al. (2022) Algorithm 2 without churn. Takes one schedule per row."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        x_euler = x + d * dt
        last = sigma_next == 0  # the corrector would divide by sigma = 0: plain Euler there
        if every_row(last):
            x_next = x_euler
        else:
            # Trapezoidal rule: average the slopes at both ends of the Euler predictor.
            # (rows whose schedule has ended go to the model as they are: no NaN enters it)
            x_2 = keep_finished(x_euler, x, sigma_next)
            d_2 = to_d(x_2, sigma_next, model(x_2, model_sigma(sigma_next, x, sigma_next), **extra_args))
            x_next = torch.where(last, x_euler, x + (d + d_2) / 2 * dt)
        x = keep_finished(x_next, x, sigma_next)
    return x


@torch.no_grad()
def sample_dpm_2(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Midpoint steps in log sigma, after DPM-Solver-2 (Lu et al. 2022) and Karras et al. (2022).
    Takes one schedule per row."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        d = to_d(x, sigma, denoised)
        last = sigma_next == 0
        x_euler = x + d * (sigma_next - sigma)
        if every_row(last):
            x_next = x_euler
        else:
            # Slope taken at the geometric mean of the two sigmas, applied over the whole step.
            sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
            x_2 = keep_finished(x + d * (sigma_mid - sigma), x, sigma_next)
            d_2 = to_d(x_2, sigma_mid, model(x_2, model_sigma(sigma_mid, x, sigma_next), **extra_args))
            x_next = torch.where(last, x_euler, x + d_2 * (sigma_next - sigma))
        x = keep_finished(x_next, x, sigma_next)
    return x


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial that is 1 at t_{i-j} and 0
    at the other order - 1 past nodes. Exact, where ComfyUI integrates it numerically."""
    others = [t[i - k] for k in range(order) if k != j]
    basis = P.polyfromroots(others) / np.prod([t[i - j] - o for o in others])
    antiderivative = P.polyint(basis)
    return float(P.polyval(t[i + 1], antiderivative) - P.polyval(t[i], antiderivative))


@torch.no_grad()
def sample_lms(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
               callback: Callback | None = None, noise_sampler: NoiseFn | None = None, order: int = 4) -> Tensor:
    """Linear multistep (Adams-Bashforth with variable steps) on the sigma ODE, as k-diffusion's LMS."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    t = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []  # slopes of the last `order` steps, oldest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [_lms_coefficient(cur_order, t, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                    callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """DPM-Solver++(2M), Lu et al. (2022) arXiv:2211.01095, in k-diffusion's sigma form.
    Takes one schedule per row."""
    extra_args = extra_args or {}
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = at(sigmas, i, x), at(sigmas, i + 1, x)
        denoised = model(x, model_sigma(sigma, x, sigma_next), **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        # In t = -log sigma the data-prediction ODE is solved exactly for constant D:
        # x_next = (sigma_next / sigma) x - expm1(-h) D, with h = t_next - t.
        t, t_next = sigma.log().neg(), sigma_next.log().neg()
        h = t_next - t
        last = sigma_next == 0
        if old_denoised is None or every_row(last):
            d_est = denoised
        else:
            # Second order: extrapolate D linearly in t to the middle of the step.
            r = (t - at(sigmas, i - 1, x).log().neg()) / h
            d_est = torch.where(last, denoised, (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised)
        x = keep_finished((t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * d_est, x, sigma_next)
        old_denoised = denoised
    return x
