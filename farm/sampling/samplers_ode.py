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
from farm.sampling.samplers_base import Callback, Denoiser, report, to_d


@torch.no_grad()
def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Euler steps, Karras et al. (2022) Algorithm 2 without churn."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Heun steps, Karras et al. (2022) Algorithm 2 without churn."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt  # the corrector would divide by sigma = 0: plain Euler
        else:
            # Trapezoidal rule: average the slopes at both ends of the Euler predictor.
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """Midpoint steps in log sigma, after DPM-Solver-2 (Lu et al. 2022) and Karras et al. (2022)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            # Slope taken at the geometric mean of the two sigmas, applied over the whole step.
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
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
    """DPM-Solver++(2M), Lu et al. (2022) arXiv:2211.01095, in k-diffusion's sigma form."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas, sigmas[i], denoised)
        # In t = -log sigma the data-prediction ODE is solved exactly for constant D:
        # x_next = (sigma_next / sigma) x - expm1(-h) D, with h = t_next - t.
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            d_est = denoised
        else:
            # Second order: extrapolate D linearly in t to the middle of the step.
            r = (t - sigmas[i - 1].log().neg()) / h
            d_est = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * d_est
        old_denoised = denoised
    return x
