"""UniPC, the unified predictor-corrector of Zhao et al. (2023), arXiv:2302.04867, in the
multistep data-prediction form ComfyUI runs (order up to 3, lower order at the end).

Written in k-diffusion's sigma space, where the VP scale alpha cancels out of every update:
x_t = (sigma_t / sigma_s) x_s - expm1(-h) D_s - B(h) * (higher-order residuals),
h = lambda_t - lambda_s, lambda = -log sigma."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from farm.sampling.noise import NoiseFn
from farm.sampling.samplers_base import Callback, Denoiser, report

# log sigma has no end at 0: like ComfyUI, the last step goes to this sigma instead
_FINAL_SIGMA = 0.001


def _coefficients(rks: list[float], hh: float, bh2: bool) -> tuple[float, float, Tensor]:
    """h phi_1(h) = e^h - 1, B(h), and the right-hand side b of UniPC's order conditions
    R rho = b with R_ij = r_j^i (hh is -h: data prediction integrates backwards in lambda)."""
    h_phi_1 = torch.tensor(hh, dtype=torch.float64).expm1().item()
    b_h = h_phi_1 if bh2 else hh
    h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
    for i in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.tensor(b, dtype=torch.float64)


def _unipc_step(model: Denoiser, x: Tensor, history: list[tuple[Tensor, Tensor]], sigma_s: Tensor,
                sigma_t: Tensor, order: int, corrector: bool, bh2: bool,
                extra_args: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
    """One UniP step of `order` from sigma_s to sigma_t, then (if corrector) UniC with the
    model's prediction at the predicted point. history: (lambda, D) of past points, newest last.
    Returns the new x and that prediction (reused as the history entry for sigma_t)."""
    lambda_0, d_0 = history[-1]
    lambda_t = sigma_t.log().neg()
    h = lambda_t - lambda_0
    rks, d1s = [], []  # relative step positions and scaled differences of past predictions
    for lambda_i, d_i in reversed(history[-order:-1]):
        rk = float((lambda_i - lambda_0) / h)
        rks.append(rk)
        d1s.append((d_i - d_0) / rk)
    rks.append(1.0)
    hh = float(-h)
    h_phi_1, b_h, b = _coefficients(rks, hh, bh2)
    r = torch.stack([torch.tensor(rks, dtype=torch.float64) ** i for i in range(order)])

    x_first = (sigma_t / sigma_s) * x - h_phi_1 * d_0  # the first-order (DPM-Solver++(1)) step
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(r[:-1, :-1], b[:-1]).tolist()
        x_t = x_first - b_h * sum(rho * d for rho, d in zip(rhos_p, d1s))
    else:
        x_t = x_first
    if not corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(r, b).tolist()
    d_t = model(x_t, sigma_t * x.new_ones([x.shape[0]]), **extra_args)
    residual = sum((rho * d for rho, d in zip(rhos_c[:-1], d1s)), torch.zeros_like(x))
    return x_first - b_h * (residual + rhos_c[-1] * (d_t - d_0)), d_t


def _sample_unipc(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None,
                  callback: Callback | None, bh2: bool) -> Tensor:
    extra_args = extra_args or {}
    if len(sigmas) <= 1:
        return x
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = _FINAL_SIGMA
    steps = len(ts) - 1
    max_order = min(3, steps - 1)
    s_in = x.new_ones([x.shape[0]])

    denoised = model(x, ts[0] * s_in, **extra_args)
    history = [(ts[0].log().neg(), denoised)]
    report(callback, 0, x, ts, ts[0], denoised)
    if steps == 1:
        # ComfyUI's solver runs order min(3, steps - 1) = 0 here and never moves: the result
        # is the start latent rescaled from VP at sigmas[0] to sigma space at the end.
        return x * ((1 + ts[-1] ** 2) / (1 + ts[0] ** 2)) ** 0.5
    for k in range(1, steps + 1):
        # warm up through orders 1, 2, ...; lower the order again for the last steps
        order = k if k < max_order else min(max_order, steps + 1 - k)
        x, d_t = _unipc_step(model, x, history, ts[k - 1], ts[k], order, k < steps, bh2, extra_args)
        if d_t is not None:
            history = (history + [(ts[k].log().neg(), d_t)])[-max_order:]
        # ComfyUI reports the last two moves together, after the final one
        if k <= steps - 2 or k == steps:
            report(callback, min(k, steps - 1), x, ts, ts[min(k, steps - 1)], history[-1][1])
    return x


@torch.no_grad()
def sample_uni_pc(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                  callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """UniPC with B(h) = h (Zhao et al. 2023), ComfyUI's "uni_pc"."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, bh2=False)


@torch.no_grad()
def sample_uni_pc_bh2(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                      callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
    """UniPC with B(h) = e^h - 1 (Zhao et al. 2023), ComfyUI's "uni_pc_bh2"."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, bh2=True)
