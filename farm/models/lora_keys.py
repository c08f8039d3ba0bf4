"""The names LoRA files give the layers of farm's models, per layout.

farm's models are diffusers/transformers modules; LoRA trainers name the same layers in
several ways, and all of them are accepted (as ComfyUI does):
- kohya / A1111, UNet: `lora_unet_` + the module path with dots as underscores, either the
  diffusers path (kohya's SD1.x files: lora_unet_down_blocks_0_attentions_0_...) or the
  LDM one (kohya's SDXL files: lora_unet_input_blocks_4_1_transformer_blocks_0_...).
- kohya / A1111, text: `lora_te_` (SD1.x) or `lora_te1_`/`lora_te2_` (SDXL's CLIP-L /
  OpenCLIP bigG) + the transformers path (text_model_encoder_layers_0_self_attn_q_proj).
- diffusers / PEFT: `unet.<diffusers path>`, `text_encoder.<path>`, `text_encoder_2.<path>`.
- ComfyUI's own: `diffusion_model.<LDM path>`.
Each map goes from a file's key prefix to the module name inside one root module.
"""
from __future__ import annotations

import torch

from farm.models.ldm_layout import unet_layout

UNET_ROOT, TE1_ROOT, TE2_ROOT = "unet", "te1", "te2"
_LDM_UNET_PREFIX = "model.diffusion_model."


def patchable_modules(root: torch.nn.Module) -> list[str]:
    """Modules whose weight a LoRA can change: linear layers and convolutions."""
    return [name for name, m in root.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def unet_key_map(unet: torch.nn.Module) -> dict[str, str]:
    names = patchable_modules(unet)
    weights = [f"{n}.weight" for n in names]
    ldm_of = {entry.sources[0]: entry.key for entry in unet_layout(weights, unet.config, _LDM_UNET_PREFIX)}
    key_map: dict[str, str] = {}
    for name in names:
        ldm = ldm_of[f"{name}.weight"][len(_LDM_UNET_PREFIX):-len(".weight")]
        for key in ("lora_unet_" + name.replace(".", "_"), "lora_unet_" + ldm.replace(".", "_"),
                    "unet." + name, "diffusion_model." + ldm):
            key_map.setdefault(key, name)
    return key_map


def text_key_map(text_model: torch.nn.Module, kohya_prefixes: tuple[str, ...], peft_prefix: str) -> dict[str, str]:
    key_map: dict[str, str] = {}
    for name in patchable_modules(text_model):
        # transformers 5 flattened CLIPTextModel (no text_model. level); files always have it
        hub = name if name.startswith(("text_model.", "text_projection")) else "text_model." + name
        for prefix in kohya_prefixes:
            key_map.setdefault(prefix + hub.replace(".", "_"), name)
        key_map.setdefault(f"{peft_prefix}.{hub}", name)
    return key_map


def clip_key_maps(text_models: tuple[torch.nn.Module, ...]) -> dict[str, dict[str, str]]:
    """Key maps of a checkpoint's text encoders: SD1.x has one, SDXL two (CLIP-L, bigG)."""
    if len(text_models) == 1:
        return {TE1_ROOT: text_key_map(text_models[0], ("lora_te_", "lora_te1_"), "text_encoder")}
    return {TE1_ROOT: text_key_map(text_models[0], ("lora_te1_",), "text_encoder"),
            TE2_ROOT: text_key_map(text_models[1], ("lora_te2_",), "text_encoder_2")}
