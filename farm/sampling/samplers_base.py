"""What every sampler shares: the model and callback interfaces, the per-step report, and the
two small formulas (Karras' ODE derivative, the ancestral step split) most of them use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

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
        callback(StepInfo(i=i, x=x, sigma=float(sigmas[i]), sigma_hat=float(sigma_hat), denoised=denoised,
                          total=len(sigmas) - 1))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Karras et al. (2022), eq. 3: the probability-flow ODE's dx/dsigma = (x - D(x)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step sigma_from -> sigma_to into a deterministic descent to sigma_down and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2 (the DDPM posterior's
    variance when eta = 1)."""
    if not eta:
        return sigma_to, sigma_to * 0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up
