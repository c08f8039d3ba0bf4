"""What every sampler shares: the model and callback interfaces, the per-step report, the
two small formulas (Karras' ODE derivative, the ancestral step split) most of them use, and
the helpers that let a sampler take one schedule per row.

One schedule per row: jobs of one batch may differ in their number of steps. Their schedules
are then stacked as a table `sigmas[step, row]` ([S+1, B], farm.sampling.row_schedules), a
shorter schedule padded with NaN after its last sigma. A sampler of ROW_SCHEDULE_SAMPLERS runs
all rows in lockstep: at step i each row moves from its own sigmas[i] to its own sigmas[i+1],
and a row whose schedule has ended keeps its latent (`keep_finished`). With a 1-D schedule
(every row the same) the helpers give back exactly the scalar arithmetic of k-diffusion."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from farm.sampling.noise import NoiseFn


class Denoiser(Protocol):
    """k-diffusion's model interface: the denoised prediction D(x, sigma) of the clean latent."""

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor:  # sigma: [B]
        ...


@dataclass(frozen=True, eq=False)
class StepInfo:
    """Reported once per sampler step, after the first model call of the step. The engine
    uses it for progress events, previews, and to stop a run by raising Interrupted."""

    i: int  # step index, 0-based
    x: Tensor  # the noisy latent the step started from
    sigma: float  # the scheduled noise level of this step
    sigma_hat: float  # the level the model was evaluated at (= sigma without churn)
    denoised: Tensor  # the model's prediction of the clean latent at sigma_hat
    total: int  # number of steps in this run (len(sigmas) - 1)


Callback = Callable[[StepInfo], None]


class Sampler(Protocol):
    def __call__(self, model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseFn | None = None) -> Tensor:
        ...


def report(callback: Callback | None, i: int, x: Tensor, sigmas: Tensor, sigma_hat: Tensor,
           denoised: Tensor) -> None:
    if callback is not None:
        callback(StepInfo(i=i, x=x, sigma=_highest(sigmas[i]), sigma_hat=_highest(sigma_hat), denoised=denoised,
                          total=len(sigmas) - 1))


def _highest(sigma: Tensor) -> float:
    """A step's sigma as one number: with one schedule per row, the highest of the rows still running."""
    if sigma.numel() == 1:
        return float(sigma)
    return float(torch.nan_to_num(sigma, nan=0.0).max())


def at(sigmas: Tensor, i: int, x: Tensor) -> Tensor:
    """Step i's sigma, shaped to broadcast over x: a scalar (one schedule), or one per row
    as [B, 1, 1, 1] (one schedule per row; NaN in rows whose schedule has ended)."""
    sigma = sigmas[i]
    return sigma if sigma.ndim == 0 else sigma.reshape(-1, *([1] * (x.ndim - 1)))


def model_sigma(sigma: Tensor, x: Tensor, sigma_next: Tensor) -> Tensor:
    """A sigma of the step sigma -> sigma_next (from `at`) as the model takes it: one per
    row, [B]. A row with no such step (its schedule has ended: sigma_next NaN) gets NaN, which
    tells the model (farm.sampling.row_schedules.SkipFinishedRows) to leave it out; its result
    is discarded (`keep_finished`)."""
    if sigma.ndim == 0:
        return sigma * x.new_ones([x.shape[0]])
    return torch.where(sigma_next.isnan(), sigma_next, sigma).reshape(-1)


def keep_finished(x_next: Tensor, x: Tensor, sigma_next: Tensor) -> Tensor:
    """x_next, except in rows whose schedule has ended (sigma_next NaN), which keep x."""
    if sigma_next.ndim == 0:
        return x_next
    return torch.where(sigma_next.isnan(), x, x_next)


def every_row(condition: Tensor) -> bool:
    """Does a per-step condition hold for every row (or for the one schedule)?"""
    return bool(condition.all())


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Karras et al. (2022), eq. 3: the probability-flow ODE's dx/dsigma = (x - D(x)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step sigma_from -> sigma_to into a deterministic descent to sigma_down and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2 (the DDPM posterior's
    variance when eta = 1)."""
    if not eta:
        return sigma_to, sigma_to * 0
    # torch.minimum, not min(): sigmas may be one per row
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up
