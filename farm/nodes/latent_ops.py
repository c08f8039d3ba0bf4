"""Latent batch and mask nodes, under ComfyUI's names, inputs and defaults: LatentUpscaleBy,
RepeatLatentBatch, LatentFromBatch, SetLatentNoiseMask. Each keeps ComfyUI's optional
LATENT fields (noise_mask, batch_index) the way ComfyUI carries them."""
from __future__ import annotations

import dataclasses
import math

import torch

from farm.nodes.latent import LATENT_UPSCALE_METHODS
from farm.nodes.resize import upscale
from farm.nodes.spec import InputSpec, Node, NodeSpec, OutputSpec
from farm.nodes.values import Latent

_LATENT_OUT = (OutputSpec("LATENT", "LATENT"),)


class LatentUpscaleBy(Node):
    spec = NodeSpec(
        class_type="LatentUpscaleBy",
        display_name="Upscale Latent By",
        category="latent",
        required=(
            InputSpec("samples", "LATENT"),
            InputSpec("upscale_method", "COMBO", choices=LATENT_UPSCALE_METHODS),
            InputSpec("scale_by", "FLOAT", default=1.5, min=0.01, max=8.0, step=0.01),
        ),
        outputs=_LATENT_OUT,
    )

    def run(self, rc, samples: Latent, upscale_method: str, scale_by: float):
        x = samples.samples
        width, height = round(x.shape[-1] * scale_by), round(x.shape[-2] * scale_by)
        return (dataclasses.replace(samples, samples=upscale(x, width, height, upscale_method, "disabled")),)


def _rows(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """A mask batch repeated cyclically to `rows` rows (ComfyUI's repeat_to_batch_size)."""
    if mask.shape[0] < rows:
        mask = mask.repeat(math.ceil(rows / mask.shape[0]), 1, 1, 1)
    return mask[:rows]


class RepeatLatentBatch(Node):
    spec = NodeSpec(
        class_type="RepeatLatentBatch",
        display_name="Repeat Latent Batch",
        category="latent/batch",
        required=(InputSpec("samples", "LATENT"), InputSpec("amount", "INT", default=1, min=1, max=64)),
        outputs=_LATENT_OUT,
    )

    def run(self, rc, samples: Latent, amount: int):
        x = samples.samples
        mask = samples.noise_mask
        if mask is not None and mask.shape[0] > 1:
            mask = _rows(mask, x.shape[0]).repeat(amount, 1, 1, 1)
        index = samples.batch_index
        if index is not None:  # each copy's rows continue after the previous copy's
            offset = max(index) - min(index) + 1
            index = tuple(index) + tuple(i + k * offset for k in range(1, amount) for i in index)
        return (Latent(x.repeat(amount, 1, 1, 1), mask, index),)


class LatentFromBatch(Node):
    spec = NodeSpec(
        class_type="LatentFromBatch",
        display_name="Latent From Batch",
        category="latent/batch",
        required=(
            InputSpec("samples", "LATENT"),
            InputSpec("batch_index", "INT", default=0, min=0, max=63),
            InputSpec("length", "INT", default=1, min=1, max=64),
        ),
        outputs=_LATENT_OUT,
    )

    def run(self, rc, samples: Latent, batch_index: int, length: int):
        x = samples.samples
        start = min(x.shape[0] - 1, batch_index)
        length = min(x.shape[0] - start, length)
        mask = samples.noise_mask
        if mask is not None and mask.shape[0] > 1:
            mask = _rows(mask, x.shape[0])[start:start + length].clone()
        if samples.batch_index is None:
            index = tuple(range(start, start + length))
        else:
            index = tuple(samples.batch_index[start:start + length])
        return (Latent(x[start:start + length].clone(), mask, index),)


class SetLatentNoiseMask(Node):
    spec = NodeSpec(
        class_type="SetLatentNoiseMask",
        display_name="Set Latent Noise Mask",
        category="latent/inpaint",
        required=(InputSpec("samples", "LATENT"), InputSpec("mask", "MASK")),
        outputs=_LATENT_OUT,
        description="Only the masked region (mask 1) is resampled; the rest keeps the input latent.",
    )

    def run(self, rc, samples: Latent, mask: torch.Tensor):
        return (dataclasses.replace(samples, noise_mask=mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])),)
