"""Standalone VAE files with random weights (tests, `farm make-checkpoint tiny-vae ...`).

`make_vae(arch, path, seed, layout)` writes the VAE of `make_checkpoint(arch, ..., seed)`
alone: the same tensors, in the bare LDM layout (what sdxl_vae.safetensors and
vae-ft-mse-840000 use) or the diffusers one (a diffusers vae folder's weights file). A
tiny arch's file carries its config in the header, as the tiny checkpoints do."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from farm.errors import CheckpointError
from farm.models.arch import CONFIGS_METADATA_KEY, arch_info
from farm.models.ldm_layout import LdmTensor, Op, vae_layout
from farm.models.load import component_specs
from farm.models.make import _planned, component_shapes, write_safetensors

VAE_LAYOUTS = ("ldm", "diffusers")


def make_vae(arch: str, path: Path, seed: int = 0, layout: str = "ldm") -> Path:
    if layout not in VAE_LAYOUTS:
        raise CheckpointError(f"unknown VAE layout {layout!r}; known: {', '.join(VAE_LAYOUTS)}")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: a VAE file is written as .safetensors")
    info = arch_info(arch)
    spec = next(s for s in component_specs(info) if s.folder == "vae")
    shapes = component_shapes(spec)
    if layout == "ldm":
        entries = vae_layout(shapes, spec.config, prefix="")
    else:
        entries = [LdmTensor(k, (k,), Op.COPY) for k in shapes]
    tiny = arch.startswith("tiny-")
    dtype = torch.float32 if tiny else torch.float16
    metadata = {CONFIGS_METADATA_KEY: json.dumps({"arch": arch, "vae": dict(spec.config)})} if tiny else None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, [_planned(seed, spec, shapes, e, dtype) for e in entries], dtype, metadata)
    return path
