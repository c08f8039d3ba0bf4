"""A standalone VAE file (models/vae/*.safetensors), as ComfyUI's VAELoader reads it.

Two key layouts are in use for SD1.x/SDXL VAEs: the LDM one ("encoder.down.0.block.0...",
sometimes still under a checkpoint's "first_stage_model." prefix: vae-ft-mse-840000,
sdxl_vae.safetensors) and the diffusers one ("encoder.down_blocks.0.resnets.0...", a
diffusers vae folder's weights file, older ones with query/key/value attention names).
Both become a diffusers AutoencoderKL; SD1.x and SDXL VAEs have the same shapes, so one
config serves both (the latent scale belongs to the checkpoint's MODEL, not to the VAE).

Only safetensors is opened: a pickle is refused before anything is read.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import safe_open

from farm.errors import (
    CheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from farm.models.arch import CONFIGS_METADATA_KEY, Arch, shipped_configs
from farm.models.device import choose_vae_dtype
from farm.models.load import ComponentSpec, empty_model, fill_model
from farm.models.store import PICKLE_EXTENSIONS, SAFE_EXTENSIONS

LDM_PREFIX = "first_stage_model."
_LDM_PROBE = "decoder.up.0.block.0.conv1.weight"
_DIFFUSERS_PROBE = "decoder.up_blocks.0.resnets.0.conv1.weight"
_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# diffusers' pre-0.14 attention names, which its from_pretrained still renames on load
_OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def vae_layout_of(keys: list[str]) -> str:
    """'ldm', 'diffusers', or an UnsupportedCheckpointError saying what the file is instead."""
    # a full checkpoint's keys qualify too: its baked-in VAE is what is read
    bare = {k.removeprefix(LDM_PREFIX) for k in keys}
    if _LDM_PROBE in bare:
        return "ldm"
    if _DIFFUSERS_PROBE in bare:
        return "diffusers"
    if any(k.startswith(("taesd_", "decoder.layers.", "layers.")) for k in keys):
        what = "a TAESD approximation VAE, which farm does not run"
    else:
        what = f"not an SD1.x/SDXL VAE (no {_LDM_PROBE} or {_DIFFUSERS_PROBE})"
    raise UnsupportedCheckpointError(f"this VAE file is {what}")


def vae_config(metadata: dict[str, str] | None) -> dict:
    """farm's tiny VAE files carry their config in the header; any other file is full size."""
    raw = (metadata or {}).get(CONFIGS_METADATA_KEY)
    if raw is None:
        return dict(shipped_configs("sd15").vae)
    try:
        return dict(json.loads(raw)["vae"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the file's {CONFIGS_METADATA_KEY!r} metadata is malformed ({exc})") from exc


def read_vae_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, diffusers-layout state dict) of a VAE file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        raise UnsafeCheckpointError(f"{path.name} is a pickle file ({path.suffix}); loading it could run arbitrary "
                                    "code, so farm only reads safetensors. Use a .safetensors release of the VAE")
    if path.suffix.lower() not in SAFE_EXTENSIONS:
        raise CheckpointError(f"{path.name}: a VAE must be a .safetensors file")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error type on a bad file
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {exc}") from exc
    with handle as f:
        keys = list(f.keys())
        layout = vae_layout_of(keys)
        config = vae_config(f.metadata())
        tensors = {k.removeprefix(LDM_PREFIX): f.get_tensor(k) for k in keys
                   if k.removeprefix(LDM_PREFIX).startswith(_PARTS)}
    if layout == "ldm":
        try:
            return config, convert_ldm_vae_checkpoint(tensors, config)
        except (KeyError, IndexError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: the VAE tensors are not in the LDM layout: {exc}") from exc
    return config, {_new_attention_name(k): v for k, v in tensors.items()}


def _new_attention_name(key: str) -> str:
    if ".attentions." in key:
        for old, new in _OLD_ATTENTION.items():
            key = key.replace(old, new)
    return key


def load_vae_file(path: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderKL:
    """The VAE on `device`, in eval mode. Its dtype is the safe one for either family beside
    models in `dtype` (SDXL's VAE overflows in float16; SD1's is as good in bfloat16)."""
    config, state = read_vae_state(path)
    model = fill_model(empty_model(ComponentSpec("vae", config)), state, f"VAE {Path(path).name}")
    torch.nn.Module.to(model, device=device, dtype=choose_vae_dtype(Arch.SDXL, device, dtype))
    return model.eval().requires_grad_(False)
