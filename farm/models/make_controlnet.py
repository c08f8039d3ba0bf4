"""ControlNet files with random weights in the real layouts, for tests and benchmarks.

`make_controlnet(arch, path, seed, layout)` writes one of CONTROLNET_ARCHES: a ControlNet
shaped like the base's UNet ("tiny-controlnet-sd15" fits tiny-sd15, "controlnet-sd15" a
full-size SD1.5) with the standard hint encoder (3 -> 16, 32, 96, 256 channels, 8x down).
A path ending in .safetensors gets one file, in the original layout (control_model.*,
layout "ldm", what most downloads are) or with diffusers' names (layout "diffusers"); any
other path becomes a diffusers folder (config.json + diffusion_pytorch_model.safetensors).
Tiny files are float32 and carry their config in the header; full-size ones are float16.
Weights are a pure function of (seed, tensor name), as farm.models.make's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from farm.errors import CheckpointError
from farm.models.arch import shipped_configs
from farm.models.controlnet import (
    CONFIG_KEYS,
    CONFIG_METADATA_KEY,
    LDM_PREFIX,
    WEIGHTS_NAME,
)
from farm.models.ldm_layout import LdmTensor, Op, unet_layout
from farm.models.make import PlannedTensor, random_tensor, write_safetensors
from farm.models.store import PICKLE_EXTENSIONS

CONTROLNET_ARCHES = ("tiny-controlnet-sd15", "tiny-controlnet-sdxl", "controlnet-sd15", "controlnet-sdxl")
LAYOUTS = ("ldm", "diffusers")
HINT_CHANNELS = (16, 32, 96, 256)  # the hint encoder every released SD ControlNet has


def controlnet_base(arch: str) -> str:
    if arch not in CONTROLNET_ARCHES:
        raise CheckpointError(f"unknown ControlNet architecture {arch!r}; known: {', '.join(CONTROLNET_ARCHES)}")
    return arch.replace("controlnet-", "")


def controlnet_config(base: str) -> dict[str, Any]:
    """The ControlNetModel config that fits the base arch's UNet."""
    config = {k: v for k, v in shipped_configs(base).unet.items() if k in CONFIG_KEYS}
    return {**config, "conditioning_channels": 3, "conditioning_embedding_out_channels": list(HINT_CHANNELS),
            "_class_name": "ControlNetModel"}


def controlnet_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from diffusers import ControlNetModel

    with torch.device("meta"):
        model = ControlNetModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def ldm_layout(keys, config: dict[str, Any]) -> list[LdmTensor]:
    """diffusers ControlNet names -> the original layout (control_model.*): the UNet encoder
    half keeps the UNet's LDM names; the hint encoder is input_hint_block.{0,2,..,14}
    (convolutions between SiLUs), the per-block outputs zero_convs.N.0, the middle one
    middle_block_out.0."""
    own: list[LdmTensor] = []
    shared: list[str] = []
    blocks = len(HINT_CHANNELS) * 2 - 2  # controlnet_cond_embedding.blocks.0 .. 5
    for key in keys:
        module, _, param = key.rpartition(".")
        if module == "controlnet_cond_embedding.conv_in":
            ldm = "input_hint_block.0"
        elif module == "controlnet_cond_embedding.conv_out":
            ldm = f"input_hint_block.{2 * (blocks + 1)}"
        elif module.startswith("controlnet_cond_embedding.blocks."):
            ldm = f"input_hint_block.{2 * (int(module.split('.')[-1]) + 1)}"
        elif module.startswith("controlnet_down_blocks."):
            ldm = f"zero_convs.{module.split('.')[-1]}.0"
        elif module == "controlnet_mid_block":
            ldm = "middle_block_out.0"
        else:
            shared.append(key)
            continue
        own.append(LdmTensor(f"{LDM_PREFIX}{ldm}.{param}", (key,), Op.COPY))
    return own + unet_layout(shared, config, prefix=LDM_PREFIX)


def make_controlnet(arch: str, path: Path, seed: int = 0, layout: str = "ldm") -> Path:
    base = controlnet_base(arch)
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown ControlNet layout {layout!r}; known: {', '.join(LAYOUTS)}")
    path = Path(path)
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        raise CheckpointError(f"{path.name}: farm writes .safetensors files or diffusers folders, never pickles")
    tiny = base.startswith("tiny-")
    dtype = torch.float32 if tiny else torch.float16
    config = controlnet_config(base)
    shapes = controlnet_shapes(config)
    single = path.suffix.lower() == ".safetensors"
    if single and layout == "ldm":
        entries = ldm_layout(shapes, config)
    else:
        entries = [LdmTensor(k, (k,), Op.COPY) for k in shapes]

    def planned(entry: LdmTensor) -> PlannedTensor:
        return PlannedTensor(entry.key, entry.shape(shapes),
                             lambda: entry.build({s: random_tensor(seed, "controlnet", s, shapes[s])
                                                  for s in entry.sources}).to(dtype))

    tensors = [planned(e) for e in entries]
    metadata = {"renderfarm.base": base}
    if single:
        if tiny:
            metadata[CONFIG_METADATA_KEY] = json.dumps(config, sort_keys=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, tensors, dtype, metadata)
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path} already exists; remove it or choose a new folder")
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**config, "_diffusers_version": "0.42.1"}, indent=2) + "\n")
    write_safetensors(path / WEIGHTS_NAME, tensors, dtype, {"format": "pt", **metadata})
    return path
