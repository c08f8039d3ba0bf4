"""Sampling under a noise mask (SetLatentNoiseMask, VAEEncodeForInpaint), as ComfyUI's
KSamplerX0Inpaint does it: before every model call the kept region (mask 0) is replaced
by the original latent noised to the current sigma with the run's initial noise, and the
model's prediction there is replaced by the original latent. Only mask 1 is repainted;
values in between blend."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def latent_mask(mask: Tensor, shape: torch.Size | tuple) -> Tensor:
    """A pixel-size mask [B,(1,)H,W] at the latent's size [N,C,h,w]: bilinear, then repeated
    over channels and (cyclically) over rows, as ComfyUI's prepare_mask does."""
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=tuple(shape[-2:]), mode="bilinear")
    m = m.expand(-1, shape[1], -1, -1)
    if m.shape[0] < shape[0]:
        m = m.repeat(-(-shape[0] // m.shape[0]), 1, 1, 1)
    return m[: shape[0]].contiguous()


class MaskedDenoiser:
    """Wraps a denoiser D(x, sigma); latent_image and noise are the run's, in sigma space."""

    def __init__(self, inner, latent_image: Tensor, noise: Tensor, mask: Tensor):
        self.inner, self.schedule = inner, inner.schedule
        self.latent_image, self.noise = latent_image, noise
        self.mask = mask.to(latent_image.device, latent_image.dtype)
        self.keep = 1.0 - self.mask

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor:
        sigma_col = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x = x * self.mask + (self.latent_image + self.noise * sigma_col) * self.keep
        out = self.inner(x, sigma, **extra_args)
        return out * self.mask + self.latent_image * self.keep
