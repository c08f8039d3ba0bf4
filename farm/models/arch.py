"""Which model family a checkpoint is, from its tensor names alone, and the configs to build it.

A single-file checkpoint (the LDM / "original" layout that ComfyUI and A1111 read) carries
weights but no shapes of its own: farm builds the diffusers models from the shipped
full-size config of the detected family (farm/models/configs/sd15, sdxl), exactly as a
user's real file is read. The one exception is farm's own tiny checkpoints: their configs
are stored as JSON in the safetensors header under CONFIGS_METADATA_KEY, and the loader
uses them when present. Full-size files made by farm never carry that key, so they take
the same path as a user's file.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from importlib.resources import files
from typing import Any

from farm.errors import CheckpointError, UnsupportedCheckpointError

ARCHES = ("tiny-sd15", "tiny-sdxl", "sd15", "sdxl", "tiny-sdxl-refiner", "sdxl-refiner")
CONFIGS_METADATA_KEY = "renderfarm.configs"  # JSON: {"arch": name, "unet": {...}, "vae": {...}, ...}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class TextLayout(Enum):
    """How a text encoder's weights are named in an LDM file."""

    HF_CLIP = "hf_clip"  # transformers' CLIPTextModel names under a prefix (SD1 and SDXL's CLIP-L)
    OPEN_CLIP = "open_clip"  # OpenCLIP names: resblocks, fused in_proj, text_projection (SDXL's bigG)


@dataclass(frozen=True)
class TextEncoderSpec:
    name: str  # ComfyUI's name for it: "clip_l", "clip_g"
    config_file: str  # in the configs folder, and the diffusers sub-folder's name without .json
    tokenizer_dir: str  # the diffusers folder's tokenizer sub-folder
    ldm_prefix: str  # where its tensors live in an LDM file
    layout: TextLayout
    with_projection: bool  # CLIPTextModelWithProjection (gives the pooled embedding SDXL needs)
    pad_token: str  # CLIP-L pads with <|endoftext|>; SDXL's OpenCLIP-G pads with "!" (id 0)


CLIP_L_SD1 = TextEncoderSpec("clip_l", "text_encoder", "tokenizer", "cond_stage_model.transformer.",
                             TextLayout.HF_CLIP, False, "<|endoftext|>")
CLIP_L_SDXL = TextEncoderSpec("clip_l", "text_encoder", "tokenizer", "conditioner.embedders.0.transformer.",
                              TextLayout.HF_CLIP, False, "<|endoftext|>")
CLIP_G_SDXL = TextEncoderSpec("clip_g", "text_encoder_2", "tokenizer_2", "conditioner.embedders.1.model.",
                              TextLayout.OPEN_CLIP, True, "!")
# the refiner has OpenCLIP bigG alone, as the first embedder
CLIP_G_REFINER = TextEncoderSpec("clip_g", "text_encoder_2", "tokenizer_2", "conditioner.embedders.0.model.",
                                 TextLayout.OPEN_CLIP, True, "!")


@dataclass(frozen=True)
class FamilySpec:
    latent_scale_factor: float  # multiplies VAE latents into the UNet's space (LDM's scale_factor)
    default_resolution: int  # pixels per side the family was trained at
    text_encoders: tuple[TextEncoderSpec, ...]
    pipeline_class: str  # diffusers' pipeline name in model_index.json


class Arch(Enum):
    SD15 = "sd15"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"  # img2img on SDXL latents; time ids carry an aesthetic score

    @property
    def spec(self) -> FamilySpec:
        return FAMILY_SPECS[self]

    @property
    def latent_scale_factor(self) -> float:
        return self.spec.latent_scale_factor

    @property
    def default_resolution(self) -> int:
        return self.spec.default_resolution

    @property
    def text_encoders(self) -> tuple[TextEncoderSpec, ...]:
        return self.spec.text_encoders


FAMILY_SPECS: dict[Arch, FamilySpec] = {
    Arch.SD15: FamilySpec(0.18215, 512, (CLIP_L_SD1,), "StableDiffusionPipeline"),
    Arch.SDXL: FamilySpec(0.13025, 1024, (CLIP_L_SDXL, CLIP_G_SDXL), "StableDiffusionXLPipeline"),
    Arch.SDXL_REFINER: FamilySpec(0.13025, 1024, (CLIP_G_REFINER,), "StableDiffusionXLImg2ImgPipeline"),
}
ARCH_FAMILY: dict[str, Arch] = {"tiny-sd15": Arch.SD15, "sd15": Arch.SD15,
                                "tiny-sdxl": Arch.SDXL, "sdxl": Arch.SDXL,
                                "tiny-sdxl-refiner": Arch.SDXL_REFINER, "sdxl-refiner": Arch.SDXL_REFINER}


@dataclass(frozen=True)
class ArchConfigs:
    """diffusers / transformers config dicts, as their config.json files hold them."""

    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoders: tuple[Mapping[str, Any], ...]  # in the family's text_encoders order

    def to_json(self, name: str) -> str:
        doc: dict[str, Any] = {"arch": name, "unet": dict(self.unet), "vae": dict(self.vae)}
        for i, config in enumerate(self.text_encoders):
            doc["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = dict(config)
        return json.dumps(doc, sort_keys=True)


@dataclass(frozen=True)
class ArchInfo:
    arch: Arch
    name: str  # "sd15", "tiny-sdxl", ...: the configs' name (the family's value for a user's file)
    configs: ArchConfigs

    @property
    def latent_scale_factor(self) -> float:
        return float(self.configs.vae.get("scaling_factor", self.arch.latent_scale_factor))

    @property
    def default_resolution(self) -> int:
        return int(self.configs.vae.get("sample_size", self.arch.default_resolution))

    @property
    def text_encoders(self) -> tuple[TextEncoderSpec, ...]:
        return self.arch.text_encoders


def shipped_configs(name: str) -> ArchConfigs:
    """The configs that ship in farm/models/configs/<name>/."""
    if name not in ARCH_FAMILY:
        raise CheckpointError(f"unknown architecture {name!r}; known: {', '.join(ARCHES)}")
    folder = files("farm.models").joinpath("configs", name)

    def read(stem: str) -> dict[str, Any]:
        return json.loads(folder.joinpath(f"{stem}.json").read_text())

    texts = tuple(read(spec.config_file) for spec in ARCH_FAMILY[name].text_encoders)
    return ArchConfigs(read("unet"), read("vae"), texts)


def arch_info(name: str) -> ArchInfo:
    """The ArchInfo of one of ARCHES, with the shipped configs."""
    configs = shipped_configs(name)  # refuses unknown names
    return ArchInfo(ARCH_FAMILY[name], name, configs)


def configs_from_metadata(arch: Arch, raw: str) -> tuple[str, ArchConfigs]:
    """The (name, configs) that farm's tiny checkpoints carry in their header."""
    try:
        doc = json.loads(raw)
        name = str(doc["arch"])
        texts = tuple(doc["text_encoder" if i == 0 else f"text_encoder_{i + 1}"]
                      for i in range(len(arch.text_encoders)))
        configs = ArchConfigs(doc["unet"], doc["vae"], texts)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the file's {CONFIGS_METADATA_KEY!r} metadata is malformed ({exc}); "
                              "remove that key to load it with the standard configs") from exc
    if ARCH_FAMILY.get(name, arch) is not arch:
        raise CheckpointError(f"the file's metadata says {name!r} but its tensors are {arch.value}; "
                              f"remove the {CONFIGS_METADATA_KEY!r} metadata or rewrite the file")
    return name, configs


# Foreign layouts, checked in order: (test on the key set, what to tell the user).
_FOREIGN: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.joint_blocks.", "Stable Diffusion 3 (MMDiT)"),
    ("joint_blocks.", "Stable Diffusion 3 (MMDiT)"),
    ("model.diffusion_model.double_blocks.", "Flux"),
    ("double_blocks.", "Flux"),
    ("cond_stage_model.model.", "Stable Diffusion 2.x (OpenCLIP-H text encoder)"),
    ("lora_unet_", "a LoRA (load it with a LoRA loader, not as a checkpoint)"),
    ("lora_te", "a LoRA (load it with a LoRA loader, not as a checkpoint)"),
)


def _prefix_summary(keys: Iterable[str], limit: int = 6) -> str:
    counts = Counter(".".join(k.split(".")[:2]) for k in keys)
    return ", ".join(f"{p}.* ({n})" for p, n in counts.most_common(limit)) or "no tensors"


def detect_family(keys: Iterable[str], shapes: Mapping[str, tuple[int, ...]] | None = None) -> Arch:
    """SD1.x or SDXL from LDM tensor names; anything else raises UnsupportedCheckpointError
    naming what was found. `shapes` (optional, name -> shape) lets it refuse inpainting and
    instruct-pix2pix UNets, whose first conv takes more than 4 channels."""
    keys = list(keys)
    keyset = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keyset)

    for prefix, what in _FOREIGN:
        if has(prefix):
            raise UnsupportedCheckpointError(f"this looks like {what}; farm runs SD1.x and SDXL checkpoints")
    if not has(UNET_PREFIX):
        raise UnsupportedCheckpointError(
            "no UNet (model.diffusion_model.*) in this file: it is not a full SD1.x/SDXL checkpoint "
            f"(found {_prefix_summary(keys)}). A diffusers-format model is a folder with model_index.json")
    if has(CLIP_L_SD1.ldm_prefix):
        arch = Arch.SD15
    elif has(CLIP_L_SDXL.ldm_prefix) and has(CLIP_G_SDXL.ldm_prefix) and has(UNET_PREFIX + "label_emb."):
        arch = Arch.SDXL
    elif has(CLIP_G_REFINER.ldm_prefix) and has(UNET_PREFIX + "label_emb."):
        arch = Arch.SDXL_REFINER
    else:
        raise UnsupportedCheckpointError(
            f"a UNet without the text encoders of SD1.x or SDXL (found {_prefix_summary(keys)}); "
            "farm needs a full checkpoint with UNet, VAE and text encoder(s)")
    if not has(VAE_PREFIX):
        raise UnsupportedCheckpointError(
            f"this {arch.value} file has no VAE (first_stage_model.*); use a full checkpoint with its VAE baked in")
    conv_in = (shapes or {}).get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise UnsupportedCheckpointError(
            f"this {arch.value} UNet takes {conv_in[1]} input channels (an inpainting or instruct-pix2pix "
            "model); farm runs text-to-image checkpoints with 4 latent channels")
    return arch


def detect_arch(keys: Iterable[str], metadata: Mapping[str, str] | None,
                shapes: Mapping[str, tuple[int, ...]] | None = None) -> ArchInfo:
    """The architecture of an LDM single-file checkpoint: the family from its tensor names,
    the configs from its header when farm wrote them there, else the shipped full-size ones."""
    arch = detect_family(keys, shapes)
    raw = (metadata or {}).get(CONFIGS_METADATA_KEY)
    if raw is None:
        return ArchInfo(arch, arch.value, shipped_configs(arch.value))
    name, configs = configs_from_metadata(arch, raw)
    return ArchInfo(arch, name, configs)
