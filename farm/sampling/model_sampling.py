"""The discrete noise table of an eps-prediction model (SD1.x, SDXL) and the maps between
timesteps, sigmas and percents that ComfyUI's ModelSamplingDiscrete defines."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """The training noise schedule of a DDPM-style model, in k-diffusion's sigma form.

    sigma_t = sqrt((1 - acp_t) / acp_t): the std of the noise added to x0 when the latent
    is written x = x0 + sigma * eps (the "VE" view k-diffusion samplers work in)."""

    alphas_cumprod: Tensor  # [T] float64, the DDPM product of (1 - beta)
    sigmas: Tensor  # [T] float32, increasing with the timestep
    log_sigmas: Tensor  # [T] float32, log taken in float64 then rounded (as ComfyUI)

    @classmethod
    def from_betas(cls, betas: Tensor) -> DiscreteSchedule:
        acp = torch.cumprod(1.0 - betas.double(), dim=0)
        sigmas = ((1 - acp) / acp) ** 0.5
        return cls(alphas_cumprod=acp, sigmas=sigmas.float(), log_sigmas=sigmas.log().float())

    @classmethod
    def scaled_linear(cls, beta_start: float, beta_end: float, steps: int = 1000) -> DiscreteSchedule:
        # ComfyUI (and the original LDM code) call this schedule "linear": it is linear in sqrt(beta).
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        return cls.from_betas(betas)

    @classmethod
    def sd(cls) -> DiscreteSchedule:
        """The schedule every SD1.x / SD2 eps / SDXL checkpoint was trained with."""
        return cls.scaled_linear(0.00085, 0.012, 1000)

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, timestep: Tensor | float) -> Tensor:
        """Sigma at a (possibly fractional) timestep: interpolates log sigma linearly."""
        t = torch.as_tensor(timestep).float().to(self.log_sigmas.device).clamp(0, self.num_timesteps - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()

    def timestep(self, sigma: Tensor) -> Tensor:
        """The integer timestep (as an int64 tensor shaped like sigma) whose table sigma is
        nearest in log space; ComfyUI feeds this rounded value, not a fractional one, to the UNet."""
        # The 4 KB table goes to sigma's device rather than sigma to the table's: no GPU sync.
        log_sigmas = self.log_sigmas.to(sigma.device)
        dists = (sigma.float().log().reshape(1, -1) - log_sigmas[:, None]).abs()
        return dists.argmin(dim=0).view(sigma.shape)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0 = start, 1 = end), as ComfyUI's
        ControlNet/conditioning start_percent and end_percent use it."""
        if percent <= 0.0:
            return 999999999.9  # "before the first step": larger than any real sigma
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1.0))))

    def to(self, device: torch.device | str) -> DiscreteSchedule:
        return DiscreteSchedule(self.alphas_cumprod.to(device), self.sigmas.to(device), self.log_sigmas.to(device))
