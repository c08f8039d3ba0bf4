"""Image and mask nodes under ComfyUI's names, inputs and defaults: ImageScaleBy,
ImageScaleToTotalPixels, ImageInvert, LoadImageMask."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageOps

from farm.nodes.image import (
    IMAGE_UPSCALE_METHODS,
    LoadImage,
    input_image_path,
    input_images,
)
from farm.nodes.resize import upscale
from farm.nodes.spec import InputSpec, Node, NodeContext, NodeSpec, OutputSpec

_IMAGE_OUT = (OutputSpec("IMAGE", "IMAGE"),)
MASK_CHANNELS = ("alpha", "red", "green", "blue")


def _resize(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    return upscale(image.movedim(-1, 1), width, height, method, "disabled").movedim(1, -1)


class ImageScaleBy(Node):
    spec = NodeSpec(
        class_type="ImageScaleBy",
        display_name="Upscale Image By",
        category="image/upscaling",
        required=(
            InputSpec("image", "IMAGE"),
            InputSpec("upscale_method", "COMBO", choices=IMAGE_UPSCALE_METHODS),
            InputSpec("scale_by", "FLOAT", default=1.0, min=0.01, max=8.0, step=0.01),
        ),
        outputs=_IMAGE_OUT,
    )

    def run(self, rc, image: torch.Tensor, upscale_method: str, scale_by: float):
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (_resize(image, width, height, upscale_method),)


class ImageScaleToTotalPixels(Node):
    spec = NodeSpec(
        class_type="ImageScaleToTotalPixels",
        display_name="Scale Image to Total Pixels",
        category="image/upscaling",
        required=(
            InputSpec("image", "IMAGE"),
            InputSpec("upscale_method", "COMBO", choices=IMAGE_UPSCALE_METHODS),
            InputSpec("megapixels", "FLOAT", default=1.0, min=0.01, max=16.0, step=0.01),
        ),
        outputs=_IMAGE_OUT,
    )

    def run(self, rc, image: torch.Tensor, upscale_method: str, megapixels: float):
        scale_by = math.sqrt(megapixels * 1024 * 1024 / (image.shape[2] * image.shape[1]))
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (_resize(image, width, height, upscale_method),)


class ImageInvert(Node):
    spec = NodeSpec(
        class_type="ImageInvert",
        display_name="Invert Image",
        category="image",
        required=(InputSpec("image", "IMAGE"),),
        outputs=_IMAGE_OUT,
    )

    def run(self, rc, image: torch.Tensor):
        return (1.0 - image,)


class LoadImageMask(Node):
    spec = NodeSpec(
        class_type="LoadImageMask",
        display_name="Load Image (as Mask)",
        category="mask",
        required=(
            InputSpec("image", "COMBO", choices=input_images, image_upload=True),
            InputSpec("channel", "COMBO", choices=MASK_CHANNELS),
        ),
        outputs=(OutputSpec("MASK", "MASK"),),
        description="One channel of an image from the input folder as a mask; alpha is inverted (1 = transparent).",
    )

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, image: str) -> str | None:
        return LoadImage.validate_inputs(ctx, image)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, image: str, channel: str) -> str | None:
        return f"{LoadImage.fingerprint(ctx, image)}:{channel}"

    def run(self, rc, image: str, channel: str):
        path = input_image_path(rc.node_ctx, image)
        if path is None:
            raise FileNotFoundError(f"{image} is not in the input folder")
        band = channel[0].upper()
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.getbands() != ("R", "G", "B", "A"):
                if img.mode == "I":  # 16-bit greyscale: ComfyUI scales it to 8 bits first
                    img = img.point(lambda v: v * (1 / 255))
                img = img.convert("RGBA")  # no alpha channel: opaque, so an all-zero alpha mask
            mask = np.asarray(img.getchannel(band), dtype=np.float32) / 255.0
        if band == "A":
            mask = 1.0 - mask
        return (torch.from_numpy(mask)[None],)
