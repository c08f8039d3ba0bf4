"""Image nodes: load from input/, save to output/ (or temp/ for previews), resize."""
from __future__ import annotations

import hashlib
import random
import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from farm.nodes.latent import CROP_METHODS
from farm.nodes.resize import keep_aspect, upscale
from farm.nodes.spec import (
    MAX_RESOLUTION,
    InputSpec,
    Node,
    NodeContext,
    NodeResult,
    NodeSpec,
    OutputSpec,
)
from farm.records.images import ImageBatch, png_text_chunks
from farm.records.paths import prefix_problem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
# Given to output nodes by the engine, never by the workflow.
SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def input_images(ctx: NodeContext) -> list[str]:
    """Image files below input/, as "name.png" or "sub/name.png" (an upload with a subfolder
    is named that way), sorted."""
    base = Path(ctx.input_dir)
    if not base.is_dir():
        return []
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def input_image_path(ctx: NodeContext, name: str) -> Path | None:
    """The file an `image` value names, or None when it is missing or outside input/."""
    base = Path(ctx.input_dir).resolve()
    path = (base / name).resolve()
    if base not in path.parents or not path.is_file():
        return None
    return path


class LoadImage(Node):
    spec = NodeSpec(
        class_type="LoadImage",
        display_name="Load Image",
        category="image",
        required=(InputSpec("image", "COMBO", choices=input_images, image_upload=True),),
        outputs=(OutputSpec("IMAGE", "IMAGE"), OutputSpec("MASK", "MASK")),
        description="Loads an image from the input folder; the mask is its inverted alpha.",
    )

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, image: str) -> str | None:
        if input_image_path(ctx, image) is None:
            return f"Invalid image file: {image}"
        return None

    @classmethod
    def fingerprint(cls, ctx: NodeContext, image: str) -> str | None:
        path = input_image_path(ctx, image)
        if path is None:
            raise FileNotFoundError(f"{image} is not in the input folder {ctx.input_dir}")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def run(self, rc, image: str):
        path = input_image_path(rc.node_ctx, image)
        if path is None:
            raise FileNotFoundError(f"{image} is not in the input folder")
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            if "A" in img.getbands():
                # ComfyUI's mask is the inverted alpha: 1 where the image is transparent
                mask = 1.0 - np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
            else:
                mask = np.zeros((64, 64), dtype=np.float32)
        return torch.from_numpy(rgb)[None], torch.from_numpy(mask)[None]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """IMAGE [B,H,W,C] in 0..1 -> uint8, truncating as ComfyUI's SaveImage does."""
    return np.clip(images.float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)


def save_images(rc, images: torch.Tensor, prefix: str, kind: str) -> NodeResult:
    # Jobs whose save node is identical (same images, same prefix) in one engine call share
    # its one write, as a later identical job shares its cached result (ComfyUI's cache
    # does the same); the files carry the first job's workflow.
    job = rc.jobs[0]
    chunks = png_text_chunks(job.prompt, job.extra_pnginfo)
    refs = rc.images.save(ImageBatch(to_uint8(images), prefix, kind, chunks))
    return NodeResult(ui={"images": [ref.as_ui() for ref in refs]}, images=tuple(refs))


class SaveImage(Node):
    spec = NodeSpec(
        class_type="SaveImage",
        display_name="Save Image",
        category="image",
        required=(
            InputSpec("images", "IMAGE", tooltip="Images to save."),
            InputSpec("filename_prefix", "STRING", default="ComfyUI",
                      tooltip="File name prefix; may start with a subfolder, e.g. 'renders/cat'."),
        ),
        hidden=SAVE_HIDDEN,
        output_node=True,
        description="Saves images as PNG files in the output folder, with the workflow in their metadata.",
    )

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, filename_prefix: str) -> str | None:
        # at submission: a prefix that climbs out is refused before the render, not after
        return prefix_problem(filename_prefix, Path(ctx.output_dir))

    def run(self, rc, images: torch.Tensor, filename_prefix: str = "ComfyUI"):
        return save_images(rc, images, filename_prefix, "output")


class PreviewImage(Node):
    spec = NodeSpec(
        class_type="PreviewImage",
        display_name="Preview Image",
        category="image",
        required=(InputSpec("images", "IMAGE"),),
        hidden=SAVE_HIDDEN,
        output_node=True,
        description="Saves images to the temp folder for viewing.",
    )

    def run(self, rc, images: torch.Tensor):
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        return save_images(rc, images, f"ComfyUI_temp_{suffix}", "temp")


class ImageScale(Node):
    spec = NodeSpec(
        class_type="ImageScale",
        display_name="Upscale Image",
        category="image/upscaling",
        required=(
            InputSpec("image", "IMAGE"),
            InputSpec("upscale_method", "COMBO", choices=IMAGE_UPSCALE_METHODS),
            InputSpec("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1, cap="max_width"),
            InputSpec("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1, cap="max_height"),
            InputSpec("crop", "COMBO", choices=CROP_METHODS),
        ),
        outputs=(OutputSpec("IMAGE", "IMAGE"),),
    )

    def run(self, rc, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str):
        if width == 0 and height == 0:
            return (image,)
        width, height = keep_aspect(width, height, image.shape[2], image.shape[1], minimum=1)
        x = upscale(image.movedim(-1, 1), width, height, upscale_method, crop)
        return (x.movedim(1, -1),)
