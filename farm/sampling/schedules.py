"""Sigma schedules under ComfyUI's scheduler names.

Each schedule is a pure function `(schedule, steps) -> sigmas`: a float32 CPU tensor that
decreases from the first sigma to a final 0.0, normally steps + 1 long (ddim_uniform and
beta can differ, as in ComfyUI). `compute_sigmas` adds ComfyUI's denoise and
"discard the penultimate sigma" rules on top."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from farm.errors import InvalidInputError
from farm.sampling.model_sampling import DiscreteSchedule

ScheduleFn = Callable[[DiscreteSchedule, int], Tensor]

# ComfyUI computes one extra sigma for these samplers and drops the next-to-last one, so that
# their second-order step never lands on the tiny sigma just above zero.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def normal(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Timesteps evenly spaced from the last to the first, mapped through the model's table."""
    start = float(schedule.timestep(torch.tensor(schedule.sigma_max)))
    end = float(schedule.timestep(torch.tensor(schedule.sigma_min)))
    # A zero-terminal-SNR table already ends at sigma 0: spend the extra step there instead.
    if math.isclose(float(schedule.sigma(end)), 0.0, abs_tol=1e-5):
        return schedule.sigma(torch.linspace(start, end, steps + 1)).float()
    return _append_zero(schedule.sigma(torch.linspace(start, end, steps)).float())


def sgm_uniform(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """As normal, but steps + 1 points with the last (t = 0) dropped, as SGM/SDXL code does."""
    start = float(schedule.timestep(torch.tensor(schedule.sigma_max)))
    end = float(schedule.timestep(torch.tensor(schedule.sigma_min)))
    return _append_zero(schedule.sigma(torch.linspace(start, end, steps + 1)[:-1]).float())


def karras(schedule: DiscreteSchedule, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = schedule.sigma_min ** (1 / rho)
    max_inv_rho = schedule.sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), steps).exp())


def simple(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Every (T / steps)-th entry of the table, counted down from the top."""
    stride = schedule.num_timesteps / steps
    picks = [float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor(picks + [0.0], dtype=torch.float32)


def ddim_uniform(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """The timesteps 1, 1 + T//steps, ... of the DDIM paper's "uniform" spacing, reversed.

    Like ComfyUI, the count is whatever range(1, T, T // steps) gives: for steps that do not
    divide T it can be one more than steps (e.g. 7 steps give 8 sigmas before the 0)."""
    sigmas = schedule.sigmas
    if math.isclose(float(sigmas[1]), 0.0, abs_tol=1e-5):
        steps, picks = steps + 1, []  # zero-terminal-SNR table: its own last entry is the 0
    else:
        picks = [0.0]
    stride = max(schedule.num_timesteps // steps, 1)
    picks += [float(sigmas[t]) for t in range(1, schedule.num_timesteps, stride)]
    return torch.tensor(picks[::-1], dtype=torch.float32)


def beta(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Timesteps at quantiles of a Beta(alpha, beta) law (Lee et al. 2024, arXiv:2407.12173),
    rounded to the table; repeats after rounding are dropped, so few sigmas may remain."""
    last = schedule.num_timesteps - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    timesteps = np.rint(_beta_ppf(quantiles, alpha, beta) * last)
    picks, previous = [], -1.0
    for t in timesteps:
        if t != previous:
            picks.append(float(schedule.sigmas[int(t)]))
        previous = t
    return torch.tensor(picks + [0.0], dtype=torch.float32)


def linear_quadratic(schedule: DiscreteSchedule, steps: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> Tensor:
    """Mochi's schedule: linear in the first half up to threshold_noise, then quadratic to 1;
    as a fraction of sigma_max."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        n_lin = steps // 2 if linear_steps is None else linear_steps
        n_quad = steps - n_lin
        lin = [i * threshold_noise / n_lin for i in range(n_lin)]
        # The quadratic q(i) = a i^2 + b i + c meets the linear part at i = n_lin with the same
        # value and slope, and reaches 1 at i = steps.
        step_diff = n_lin - threshold_noise * steps
        a = step_diff / (n_lin * n_quad**2)
        b = threshold_noise / n_lin - 2 * step_diff / n_quad**2
        c = a * n_lin**2
        quad = [a * i**2 + b * i + c for i in range(n_lin, steps)]
        fractions = [1.0 - f for f in lin + quad + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * schedule.sigma_max


def kl_optimal(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """The KL-optimal schedule of Sabour et al. (2024): evenly spaced in arctan(sigma).

    ComfyUI divides by steps - 1 and so returns NaN for one step; here one step is sigma_max."""
    ramp = torch.arange(steps, dtype=torch.float32).div_(max(steps - 1, 1))
    angles = ramp * math.atan(schedule.sigma_min) + (1 - ramp) * math.atan(schedule.sigma_max)
    return _append_zero(angles.tan())


SCHEDULERS: dict[str, ScheduleFn] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}


def compute_sigmas(schedule: DiscreteSchedule, scheduler_name: str, steps: int, denoise: float = 1.0,
                   sampler_name: str | None = None) -> Tensor:
    """The sigmas KSampler would use: for denoise < 1 it builds the schedule for
    int(steps / denoise) steps and keeps the last steps + 1 sigmas; denoise <= 0 gives an
    empty tensor (the sampler then returns the latent unchanged)."""
    if scheduler_name not in SCHEDULERS:
        raise InvalidInputError(f"unknown scheduler {scheduler_name!r}; use one of: {', '.join(SCHEDULERS)}")
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1, got {steps}")
    fn = SCHEDULERS[scheduler_name]

    def build(n: int) -> Tensor:
        if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
            sigmas = fn(schedule, n + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]])
        return fn(schedule, n)

    if denoise is None or denoise > 0.9999:
        return build(steps)
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    return build(int(steps / denoise))[-(steps + 1):]


# --- the Beta law's quantile function, so that the "beta" schedule needs no scipy -----------

def _beta_ppf(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """Quantiles of Beta(a, b) by bisection on the regularized incomplete beta function; the
    result is exact to the last few ulps, plenty for rounding t * 999 to an integer."""
    p = np.asarray(p, dtype=np.float64)
    lo, hi = np.zeros_like(p), np.ones_like(p)
    for _ in range(80):  # 2^-80 is far below float64's resolution near any x in (0, 1)
        mid = 0.5 * (lo + hi)
        below = _beta_cdf(mid, a, b) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    x = 0.5 * (lo + hi)
    x = np.where(p <= 0.0, 0.0, np.where(p >= 1.0, 1.0, x))
    # Symmetric law: the median is 1/2 exactly, which decides a round-half case (499.5 -> 500).
    return np.where((a == b) & (p == 0.5), 0.5, x)


def _beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """I_x(a, b). The continued fraction converges fast for x < (a + 1) / (a + b + 2); above
    that, I_x(a, b) = 1 - I_{1-x}(b, a) brings x back into that range."""
    x = np.clip(x, 0.0, 1.0)
    flip = x > (a + 1) / (a + b + 2)
    xs = np.where(flip, 1 - x, x)
    aa, bb = np.where(flip, b, a), np.where(flip, a, b)
    with np.errstate(divide="ignore"):
        log_front = (aa * np.log(xs) + bb * np.log1p(-xs)
                     + math.lgamma(a + b) - _lgamma(aa) - _lgamma(bb))
    value = np.exp(log_front) * _beta_cf(xs, aa, bb) / aa
    value = np.where(xs <= 0.0, 0.0, value)
    return np.where(flip, 1 - value, value)


def _lgamma(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma, otypes=[np.float64])(v)


def _beta_cf(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The continued fraction of the incomplete beta function, evaluated by Lentz's method."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + numerator / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            h = h * d * c
        if np.all(np.abs(d * c - 1) < 1e-15):
            break
    return h
