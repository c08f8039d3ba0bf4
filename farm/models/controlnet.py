"""ControlNet files, offline and safetensors only, and the residuals they add to the UNet.

Files come as users have them:
- the original (LDM) single file: control_model.* keys (some releases drop the prefix);
- diffusers' layout: a folder with config.json and diffusion_pytorch_model.safetensors,
  or that weights file alone (ComfyUI lists it as folder/diffusion_pytorch_model.safetensors).

The network is diffusers' ControlNetModel. Its config comes from config.json when there is
one, else from farm's header key (farm's tiny files), else from the base family's shipped
UNet config (SD1.x or SDXL, told apart by the cross-attention width), as ComfyUI derives
it from the tensors. LDM names are converted by diffusers' own converter.
"""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors import safe_open

from farm.errors import (
    CheckpointError,
    InvalidInputError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from farm.models.arch import shipped_configs
from farm.models.store import PICKLE_EXTENSIONS, SAFE_EXTENSIONS
from farm.sampling.control import ControlHint
from farm.sampling.crop import center_crop_to_aspect

log = logging.getLogger(__name__)

LDM_PREFIX = "control_model."
CONFIG_METADATA_KEY = "renderfarm.controlnet_config"  # JSON: the diffusers config (farm's tiny files)
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_DIFFUSERS_PROBE = "controlnet_cond_embedding.conv_in.weight"
_LDM_PROBE = "zero_convs.0.0.weight"
_CONTEXT_PROBE = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
_FAMILY_BY_CONTEXT = {768: "sd15", 2048: "sdxl"}  # cross-attention width -> base family
_LABEL_EMB = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
# ControlNetModel's own config keys: what a UNet config shares with it
CONFIG_KEYS = frozenset(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
HINT_COMPRESSION = 8  # hint pixels per latent pixel, as ComfyUI's compression_ratio
HINT_UPSCALE = "nearest-exact"  # ComfyUI's upscale_algorithm for ControlNet hints


@dataclass(frozen=True, eq=False)
class LoadedControlNet:
    """CONTROL_NET: a ControlNet network ready on its device."""

    owned_by_provider: ClassVar[bool] = True  # the loader's cache owns its memory, not the output cache

    model: ControlNetModel
    name: str
    family: str  # "sd15" | "sdxl": the base models it fits
    global_pool: bool = False  # the shuffle ControlNets: each residual replaced by its spatial mean

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_controlnet(path: Path, device: torch.device, dtype: torch.dtype, name: str | None = None) -> LoadedControlNet:
    path = Path(path)
    name = name or path.name
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        raise UnsafeCheckpointError(f"{name} is a pickle file ({path.suffix}); loading it could run arbitrary code, "
                                    "so the farm only loads safetensors. Convert it to .safetensors")
    if path.is_dir():
        weights, config_file = path / WEIGHTS_NAME, path / "config.json"
        if not weights.is_file():
            raise CheckpointError(f"{name}: a diffusers ControlNet folder needs {WEIGHTS_NAME} (safetensors); "
                                  f"found {sorted(p.name for p in path.iterdir())}")
    elif path.suffix.lower() in SAFE_EXTENSIONS:
        weights, config_file = path, path.parent / "config.json"
        if path.name != WEIGHTS_NAME:
            config_file = None  # a config.json beside a single file belongs to something else
    else:
        raise CheckpointError(f"{name}: a ControlNet is a .safetensors file or a diffusers folder")
    tensors, metadata = _read(weights, name)
    config_json = _read_config(config_file) if config_file is not None and config_file.is_file() else None
    state, family, config = _to_diffusers(tensors, metadata, config_json, name)
    # ComfyUI's rule for the shuffle ControlNets, by file name; farm pools in
    # control_residuals, so the network itself always returns full-size residuals
    global_pool = bool(config.pop("global_pool_conditions", False)) or \
        Path(name).stem.endswith(("_shuffle", "_shuffle_fp16"))
    from farm.models.load import fill_model

    with torch.device("meta"):
        model = ControlNetModel.from_config(config)
    fill_model(model, state, f"ControlNet {name}")
    torch.nn.Module.to(model, device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedControlNet(model, name, family, global_pool)


def _read(weights: Path, name: str) -> tuple[dict[str, torch.Tensor], Mapping[str, str]]:
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on a bad file
        raise CheckpointError(f"{name} is not a readable safetensors file: {' '.join(str(exc).split())[:300]}") from exc


def _read_config(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc


def _to_diffusers(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str], config_json: dict | None,
                  name: str) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """(diffusers state dict, family, ControlNetModel config) of a file's tensors."""
    if "lora_controlnet" in tensors:
        raise UnsupportedCheckpointError(f"{name} is a Control-LoRA; farm runs full ControlNets")
    if _DIFFUSERS_PROBE in tensors:
        state = tensors
    else:
        if LDM_PREFIX + _LDM_PROBE in tensors:
            ldm = {k[len(LDM_PREFIX):]: v for k, v in tensors.items() if k.startswith(LDM_PREFIX)}
        elif _LDM_PROBE in tensors:
            ldm = tensors
        else:
            prefixes = sorted({k.split(".")[0] for k in tensors})[:6]
            raise UnsupportedCheckpointError(
                f"{name} is not a ControlNet (no control_model.zero_convs.* or controlnet_cond_embedding.*; "
                f"found {', '.join(prefixes) or 'no tensors'}): a T2I-Adapter or another model type?")
        if "difference" in tensors:
            raise UnsupportedCheckpointError(f"{name} is a 'difference' ControlNet, stored relative to its base "
                                             "model; farm loads ControlNets that hold their full weights")
        state = None
    family, config = _config(state, tensors, metadata, config_json, name)
    if state is None:
        state = convert_controlnet_checkpoint(ldm, config)
        for module, ldm_name in _LABEL_EMB.items():  # SDXL's size embedding, which the converter leaves out
            for param in ("weight", "bias"):
                if f"{ldm_name}.{param}" in ldm:
                    state[f"{module}.{param}"] = ldm[f"{ldm_name}.{param}"]
        state = {k: v for k, v in state.items() if v is not None}  # names the file lacks: fill_model says so
    return state, family, config


def _config(state: dict | None, tensors: dict, metadata: Mapping[str, str], config_json: dict | None,
            name: str) -> tuple[str, dict[str, Any]]:
    if config_json is not None:
        config = dict(config_json)
    elif CONFIG_METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[CONFIG_METADATA_KEY])
        except ValueError as exc:
            raise CheckpointError(f"{name}: its {CONFIG_METADATA_KEY!r} metadata is not JSON ({exc})") from exc
    else:
        config = _inferred_config(state, tensors, name)
    context = int(config.get("cross_attention_dim", 0))
    family = _FAMILY_BY_CONTEXT.get(context, "sdxl" if config.get("addition_embed_type") else "sd15")
    return family, {k: v for k, v in config.items() if k in CONFIG_KEYS}


def _inferred_config(state: dict | None, tensors: dict, name: str) -> dict[str, Any]:
    """The standard config of the base family the tensors fit, as ComfyUI derives it."""
    if state is not None:
        context_key, hint_key = _CONTEXT_PROBE, _DIFFUSERS_PROBE
    else:
        prefix = LDM_PREFIX if LDM_PREFIX + _LDM_PROBE in tensors else ""
        context_key = prefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        if context_key not in tensors:  # SDXL has no attention in its first level
            context_key = prefix + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
        hint_key = prefix + "input_hint_block.0.weight"
    if context_key not in tensors:
        raise UnsupportedCheckpointError(f"{name}: cannot tell which base model this ControlNet is for "
                                         "(no cross-attention found); give it a config.json beside it")
    context = tensors[context_key].shape[1]
    family = _FAMILY_BY_CONTEXT.get(context)
    if family is None:
        raise UnsupportedCheckpointError(f"{name}: a ControlNet for text width {context} (SD2.x is 1024); "
                                         "farm runs SD1.x (768) and SDXL (2048) ControlNets")
    config = {k: v for k, v in shipped_configs(family).unet.items() if k in CONFIG_KEYS}
    config["conditioning_channels"] = tensors[hint_key].shape[1]
    return config


# --- sampling: the residuals -------------------------------------------------------------

def _hint_pixels(hint: ControlHint, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The hint image at the latent's size x 8: centre-cropped to its aspect ratio, then
    nearest-exact, as ComfyUI's common_upscale(..., "center"). Kept per size."""
    key = (height, width, str(device), dtype)
    if key not in hint.prepared:
        image = center_crop_to_aspect(hint.image, width, height).float()
        hint.prepared[key] = F.interpolate(image, size=(height, width), mode=HINT_UPSCALE).to(device, dtype)
    return hint.prepared[key]


def control_residuals(cond, x_in: torch.Tensor, timestep: torch.Tensor, schedule,
                      added: dict | None, out_dtype: torch.dtype) -> tuple[tuple[torch.Tensor, ...], torch.Tensor] | None:
    """The sum of every active hint's residuals for the UNet's skip connections and middle
    block, rows without an active hint getting zeros; None when no hint acts at this step.

    cond is the CondBatch of x_in's rows, its hints' rows being rows of x_in. A hint acts on
    a row while that row's sigma is within its window; hints on one network with the same
    window run as one ControlNet call over all their rows."""
    groups: dict[tuple, list[tuple[ControlHint, list[int]]]] = {}
    sigma = cond.sigma.float().cpu()
    for hint in cond.control:
        if (hint.net.family == "sdxl") != (added is not None):
            raise InvalidInputError(f"ControlNet {hint.net.name} is for {hint.net.family} models but the sampler's "
                                    f"model is {'SDXL' if added is not None else 'SD1.x'}; pick a matching ControlNet")
        high, low = hint.sigma_range(schedule)
        rows = [r for r in hint.rows if low <= float(sigma[r]) <= high]
        if rows:
            groups.setdefault((id(hint.net), high, low), []).append((hint, rows))
    if not groups:
        return None
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    height, width = x_in.shape[-2] * HINT_COMPRESSION, x_in.shape[-1] * HINT_COMPRESSION
    for members in groups.values():
        net = members[0][0].net
        rows, images, strengths = [], [], []
        for hint, active in members:
            pixels = _hint_pixels(hint, height, width, net.device, net.dtype)
            acting = set(active)
            for i, r in enumerate(hint.rows):
                if r in acting:
                    # the i-th row of a hint takes image i mod M, as ComfyUI's broadcast_image_to
                    images.append(pixels[i % pixels.shape[0]])
                    rows.append(r)
                    strengths.append(hint.strength)
        index = torch.tensor(rows, device=x_in.device)
        extra = None
        if added is not None:
            extra = {k: v[index].to(net.device, net.dtype) for k, v in added.items()}
        res_down, res_mid = net.model(
            x_in[index].to(net.device, net.dtype), timestep[index].to(net.device),
            encoder_hidden_states=cond.embeds[index].to(net.device, net.dtype),
            controlnet_cond=torch.stack(images), added_cond_kwargs=extra, return_dict=False)
        scale = torch.tensor(strengths, device=x_in.device, dtype=torch.float32).reshape(-1, 1, 1, 1)
        if net.global_pool:
            res_down = [r.mean(dim=(2, 3), keepdim=True).expand_as(r) for r in res_down]
            res_mid = res_mid.mean(dim=(2, 3), keepdim=True).expand_as(res_mid)
        res_down = [(r.to(x_in.device).float() * scale) for r in res_down]
        res_mid = res_mid.to(x_in.device).float() * scale
        if down is None:
            down = [torch.zeros((x_in.shape[0], *r.shape[1:]), device=x_in.device) for r in res_down]
            mid = torch.zeros((x_in.shape[0], *res_mid.shape[1:]), device=x_in.device)
        for total, r in zip(down, res_down):
            total.index_add_(0, index, r)
        mid.index_add_(0, index, res_mid)
    return tuple(d.to(out_dtype) for d in down), mid.to(out_dtype)
