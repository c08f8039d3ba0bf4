"""Latent nodes: empty latents, resizing, and the VAE between pixels and latents."""
from __future__ import annotations

import dataclasses

import torch

from farm.nodes.resize import keep_aspect, upscale
from farm.nodes.spec import (
    MAX_BATCH_SIZE,
    MAX_RESOLUTION,
    InputSpec,
    Node,
    NodeSpec,
    OutputSpec,
)
from farm.nodes.values import Latent

# Pixels one batched decoder call takes at most: 16 images of 512 x 512, 4 of 1024 x 1024. The
# decoder's activations grow with pixels (about 2.8 GiB per megapixel in fp16: 11.6 GiB for one
# 2048 px image on an H200, 2026-12-02), and they come on top of the resident checkpoints.
DECODE_PIXELS_PER_CALL = 4 * 1024 * 1024
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")


class EmptyLatentImage(Node):
    spec = NodeSpec(
        class_type="EmptyLatentImage",
        display_name="Empty Latent Image",
        category="latent",
        required=(
            InputSpec("width", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8, cap="max_width",
                      tooltip="Image width in pixels."),
            InputSpec("height", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8, cap="max_height",
                      tooltip="Image height in pixels."),
            InputSpec("batch_size", "INT", default=1, min=1, max=MAX_BATCH_SIZE, cap="max_batch_size",
                      tooltip="How many images to make."),
        ),
        outputs=(OutputSpec("LATENT", "LATENT"),),
        description="A batch of blank latents to start sampling from.",
    )

    def run(self, rc, width: int, height: int, batch_size: int):
        return (Latent(torch.zeros(batch_size, 4, height // 8, width // 8)),)


class LatentUpscale(Node):
    spec = NodeSpec(
        class_type="LatentUpscale",
        display_name="Upscale Latent",
        category="latent",
        required=(
            InputSpec("samples", "LATENT"),
            InputSpec("upscale_method", "COMBO", choices=LATENT_UPSCALE_METHODS),
            InputSpec("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8, cap="max_width"),
            InputSpec("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8, cap="max_height"),
            InputSpec("crop", "COMBO", choices=CROP_METHODS),
        ),
        outputs=(OutputSpec("LATENT", "LATENT"),),
    )

    def run(self, rc, samples: Latent, upscale_method: str, width: int, height: int, crop: str):
        if width == 0 and height == 0:
            return (samples,)
        x = samples.samples
        width, height = keep_aspect(width, height, x.shape[-1] * 8, x.shape[-2] * 8, minimum=64)
        width, height = max(64, width), max(64, height)
        # the noise mask and batch index ride along, as in ComfyUI
        return (dataclasses.replace(samples, samples=upscale(x, width // 8, height // 8, upscale_method, crop)),)


class VAEDecode(Node):
    spec = NodeSpec(
        class_type="VAEDecode",
        display_name="VAE Decode",
        category="latent",
        required=(
            InputSpec("samples", "LATENT", tooltip="Latents to decode."),
            InputSpec("vae", "VAE", tooltip="The VAE that decodes them."),
        ),
        outputs=(OutputSpec("IMAGE", "IMAGE"),),
        description="Turns latents back into images.",
    )

    def run(self, rc, samples: Latent, vae):
        return (vae.decode(samples.samples, rc.check_interrupt),)

    def run_batch(self, rc, inputs: list[dict]):
        """Several jobs' latents decoded together (the engine calls this for a batch of
        jobs): one decoder call per VAE and latent size, each up to DECODE_PIXELS_PER_CALL,
        instead of one call per job. Rows of the decoder are independent (GroupNorm works per
        image), so a job gets the images it gets alone, within float tolerance."""
        out: list[torch.Tensor | None] = [None] * len(inputs)
        together: dict[tuple, list[int]] = {}  # (VAE, latent shape but rows) -> job indexes
        for i, kwargs in enumerate(inputs):
            latents = kwargs["samples"].samples
            together.setdefault((id(kwargs["vae"]), tuple(latents.shape[1:])), []).append(i)
        for members in together.values():
            vae = inputs[members[0]]["vae"]
            latents = torch.cat([inputs[i]["samples"].samples for i in members])
            rows = max(1, DECODE_PIXELS_PER_CALL // (latents.shape[-2] * latents.shape[-1] * vae.downscale ** 2))
            images = torch.cat([vae.decode(chunk, rc.check_interrupt) for chunk in latents.split(rows)])
            for i, part in zip(members, images.split([inputs[i]["samples"].samples.shape[0] for i in members])):
                out[i] = part
        return [(images,) for images in out]


class VAEEncode(Node):
    spec = NodeSpec(
        class_type="VAEEncode",
        display_name="VAE Encode",
        category="latent",
        required=(InputSpec("pixels", "IMAGE"), InputSpec("vae", "VAE")),
        outputs=(OutputSpec("LATENT", "LATENT"),),
    )

    def run(self, rc, pixels: torch.Tensor, vae):
        return (Latent(vae.encode(pixels, rc.check_interrupt)),)
