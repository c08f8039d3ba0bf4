"""Inpainting inputs under ComfyUI's names: VAEEncodeForInpaint and InpaintModelConditioning.

Both produce a latent with a noise mask, which the sampler honours (farm.sampling.inpaint).
farm's models are all 4-channel; ComfyUI gives the masked-image latent
(concat_latent_image) only to 9-channel inpainting models, so here the conditioning passes
through unchanged, exactly as ComfyUI treats it for a 4-channel model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from farm.nodes.spec import InputSpec, Node, NodeSpec, OutputSpec
from farm.nodes.values import Latent


def _mask_at(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A MASK [B,H,W] as [B,1,height,width], bilinear (ComfyUI resizes the mask to the pixels)."""
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    return F.interpolate(m, size=(height, width), mode="bilinear")


def _grow(mask: torch.Tensor, by: int) -> torch.Tensor:
    """Dilate a [B,1,H,W] mask by a square of `by` pixels, then round to 0/1."""
    if by == 0:
        return mask.round()
    kernel = torch.ones(1, 1, by, by)
    padding = math.ceil((by - 1) / 2)
    return torch.clamp(F.conv2d(mask.round(), kernel, padding=padding), 0, 1)


def _gray_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked pixels (mask rounded to 1) set to mid-gray, the rest unchanged."""
    keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)  # [B,H,W,1]
    return (pixels[..., :3] - 0.5) * keep + 0.5


class VAEEncodeForInpaint(Node):
    spec = NodeSpec(
        class_type="VAEEncodeForInpaint",
        display_name="VAE Encode (for Inpainting)",
        category="latent/inpaint",
        required=(
            InputSpec("pixels", "IMAGE"), InputSpec("vae", "VAE"), InputSpec("mask", "MASK"),
            InputSpec("grow_mask_by", "INT", default=6, min=0, max=64, step=1),
        ),
        outputs=(OutputSpec("LATENT", "LATENT"),),
    )

    def run(self, rc, pixels: torch.Tensor, vae, mask: torch.Tensor, grow_mask_by: int):
        h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
        mask = _mask_at(mask, pixels.shape[1], pixels.shape[2])
        if (h, w) != tuple(pixels.shape[1:3]):  # ComfyUI crops to a multiple of 8, centred
            dy, dx = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
            pixels, mask = pixels[:, dy:dy + h, dx:dx + w], mask[:, :, dy:dy + h, dx:dx + w]
        grown = _grow(mask, grow_mask_by)
        latent = vae.encode(_gray_out(pixels, mask), rc.check_interrupt)
        return (Latent(latent, noise_mask=grown[:, :, :h, :w].round()),)


class InpaintModelConditioning(Node):
    spec = NodeSpec(
        class_type="InpaintModelConditioning",
        display_name="InpaintModelConditioning",
        category="conditioning/inpaint",
        required=(
            InputSpec("positive", "CONDITIONING"), InputSpec("negative", "CONDITIONING"),
            InputSpec("vae", "VAE"), InputSpec("pixels", "IMAGE"), InputSpec("mask", "MASK"),
            InputSpec("noise_mask", "BOOLEAN", default=True,
                      tooltip="Add a noise mask to the latent so sampling only happens within the mask."),
        ),
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative"),
                 OutputSpec("LATENT", "latent")),
    )

    def run(self, rc, positive, negative, vae, pixels: torch.Tensor, mask: torch.Tensor, noise_mask: bool = True):
        h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
        mask = _mask_at(mask, pixels.shape[1], pixels.shape[2])
        if (h, w) != tuple(pixels.shape[1:3]):
            dy, dx = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
            pixels, mask = pixels[:, dy:dy + h, dx:dx + w], mask[:, :, dy:dy + h, dx:dx + w]
        latent = Latent(vae.encode(pixels, rc.check_interrupt), noise_mask=mask if noise_mask else None)
        return positive, negative, latent
