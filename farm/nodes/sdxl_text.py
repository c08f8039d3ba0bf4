"""CLIPTextEncodeSDXL and CLIPTextEncodeSDXLRefiner: prompts with SDXL's size conditioning.

SDXL's UNet was trained with the image's original size, the crop taken from it and the
target size as extra inputs (the "time ids" beside the pooled text); the refiner with the
size and an aesthetic score. These nodes put those numbers on the conditioning; the
sampler turns them into the UNet's ids (farm.nodes.ksampling). Without them the sampler
uses the latent's own size, crop 0, as ComfyUI does."""
from __future__ import annotations

import contextlib
import dataclasses

from farm.models.lora import patched
from farm.nodes.conditioning import _encoder_lock
from farm.nodes.lora import PatchedClip
from farm.nodes.spec import MAX_RESOLUTION, InputSpec, Node, NodeSpec, OutputSpec
from farm.sampling.regions import SizeConditioning

_CLIP = InputSpec("clip", "CLIP")
_OUT = (OutputSpec("CONDITIONING", "CONDITIONING"),)


def _int(name: str, default: int) -> InputSpec:
    return InputSpec(name, "INT", default=default, min=0, max=MAX_RESOLUTION)


def _text(name: str) -> InputSpec:
    return InputSpec(name, "STRING", multiline=True, batchable=True)


class CLIPTextEncodeSDXL(Node):
    spec = NodeSpec(
        class_type="CLIPTextEncodeSDXL",
        display_name="CLIPTextEncodeSDXL",
        category="advanced/conditioning",
        required=(_CLIP, _int("width", 1024), _int("height", 1024), _int("crop_w", 0), _int("crop_h", 0),
                  _int("target_width", 1024), _int("target_height", 1024), _text("text_g"), _text("text_l")),
        outputs=_OUT,
        description="Encodes a prompt per SDXL text encoder (text_g: OpenCLIP bigG, text_l: CLIP-L) with the "
                    "original size, crop and target size SDXL conditions on.",
    )

    def run(self, rc, clip, width: int, height: int, crop_w: int, crop_h: int, target_width: int,
            target_height: int, text_g: str, text_l: str):
        base = clip.base if isinstance(clip, PatchedClip) else clip
        lora = patched(clip.roots(), clip.loras) if isinstance(clip, PatchedClip) else contextlib.nullcontext()
        with _encoder_lock(clip), lora:
            cond = base.encode_sdxl(text_g, text_l)
        size = SizeConditioning(width=width, height=height, crop_w=crop_w, crop_h=crop_h,
                                target_width=target_width, target_height=target_height)
        return (dataclasses.replace(cond, size=size),)


class CLIPTextEncodeSDXLRefiner(Node):
    spec = NodeSpec(
        class_type="CLIPTextEncodeSDXLRefiner",
        display_name="CLIPTextEncodeSDXLRefiner",
        category="advanced/conditioning",
        required=(InputSpec("ascore", "FLOAT", default=6.0, min=0.0, max=1000.0, step=0.01),
                  _int("width", 1024), _int("height", 1024), _text("text"), _CLIP),
        outputs=_OUT,
        description="Encodes a prompt for the SDXL refiner with its aesthetic score and image size.",
    )

    def run(self, rc, ascore: float, width: int, height: int, text: str, clip):
        with _encoder_lock(clip):
            cond = clip.encode(text)
        return (dataclasses.replace(cond, size=SizeConditioning(width=width, height=height, aesthetic_score=ascore)),)
