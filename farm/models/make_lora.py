"""LoRA files with random weights in the real key layouts, for tests and benchmarks.

`make_lora(arch, path, seed, layout)` writes a LoRA for the base arch behind one of
LORA_ARCHES ("tiny-lora-sd15" fits tiny-sd15, "lora-sdxl" fits full-size SDXL ...). It
targets what kohya's sd-scripts targets by default: every linear layer and 1x1 convolution
of the UNet's transformer blocks, and the attention and MLP linears of the text encoders.

Layouts: "kohya" (lora_unet_/lora_te_ names, .lora_down/.lora_up/.alpha; SD1.x UNet
layers under their diffusers path, SDXL under their LDM path, as sd-scripts writes them)
or "peft" (diffusers' save_lora_weights: unet./text_encoder. names, .lora_A/.lora_B, no
alpha). Weights are a pure function of (seed, key): down ~ N(0, 1/in), up scaled so
that the delta is about a quarter of the layer's own weight at strength 1.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

from farm.errors import CheckpointError
from farm.models.arch import arch_info
from farm.models.ldm_layout import unet_layout
from farm.models.load import component_specs, empty_model
from farm.models.make import PlannedTensor, write_safetensors

LORA_ARCHES = ("tiny-lora-sd15", "tiny-lora-sdxl", "lora-sd15", "lora-sdxl")
LAYOUTS = ("kohya", "peft")
_UP_SCALE = 0.5


def lora_base(arch: str) -> str:
    if arch not in LORA_ARCHES:
        raise CheckpointError(f"unknown LoRA architecture {arch!r}; known: {', '.join(LORA_ARCHES)}")
    return arch.replace("lora-", "")


def _unet_targets(unet: torch.nn.Module) -> list[str]:
    """The linears and 1x1 convolutions of the transformer blocks (proj_in/out included)."""
    return [name for name, m in unet.named_modules() if ".attentions." in name and
            (isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)))]


def _text_targets(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (".self_attn." in name or ".mlp." in name)]


def _hub(name: str) -> str:
    return name if name.startswith("text_model.") else "text_model." + name


def _planned(seed: int, key: str, shape: tuple[int, ...], std: float, dtype: torch.dtype) -> PlannedTensor:
    def make() -> torch.Tensor:
        stream = (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63
        return (torch.randn(shape, generator=torch.Generator().manual_seed(stream)) * std).to(dtype)

    return PlannedTensor(key, shape, make)


def make_lora(arch: str, path: Path, seed: int = 0, layout: str = "kohya", rank: int = 4) -> Path:
    base = lora_base(arch)
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown LoRA layout {layout!r}; known: {', '.join(LAYOUTS)}")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: a LoRA is written as one .safetensors file")
    info = arch_info(base)
    dtype = torch.float32 if base.startswith("tiny-") else torch.float16
    is_sdxl = len(info.text_encoders) == 2
    alpha = rank / 2 if layout == "kohya" else None
    planned: list[PlannedTensor] = []

    def add(key_prefix: str, module: torch.nn.Module) -> None:
        out_f, in_f = module.weight.shape[0], module.weight[0].numel()
        conv = (1, 1) if isinstance(module, torch.nn.Conv2d) else ()
        if layout == "kohya":
            down, up = f"{key_prefix}.lora_down.weight", f"{key_prefix}.lora_up.weight"
        else:
            down, up = f"{key_prefix}.lora_A.weight", f"{key_prefix}.lora_B.weight"
        planned.append(_planned(seed, down, (rank, in_f, *conv), 1 / math.sqrt(in_f), dtype))
        planned.append(_planned(seed, up, (out_f, rank, *conv), _UP_SCALE / math.sqrt(rank), dtype))
        if alpha is not None:
            planned.append(PlannedTensor(f"{key_prefix}.alpha", (), lambda: torch.tensor(alpha, dtype=dtype)))

    for spec in component_specs(info):
        if spec.folder == "vae":
            continue
        model = empty_model(spec)
        if spec.folder == "unet":
            names = _unet_targets(model)
            ldm = {e.sources[0]: e.key for e in unet_layout([f"{n}.weight" for n in names], spec.config, "")}
            for name in names:
                if layout == "peft":
                    key = f"unet.{name}"
                elif is_sdxl:  # sd-scripts builds SDXL on the LDM UNet
                    key = "lora_unet_" + ldm[f"{name}.weight"].removesuffix(".weight").replace(".", "_")
                else:
                    key = "lora_unet_" + name.replace(".", "_")
                add(key, model.get_submodule(name))
        else:
            second = spec.folder == "text_encoder_2"
            for name in _text_targets(model):
                if layout == "peft":
                    key = f"{spec.folder}.{_hub(name)}"
                else:
                    key = ("lora_te2_" if second else "lora_te1_" if is_sdxl else "lora_te_") + \
                        _hub(name).replace(".", "_")
                add(key, model.get_submodule(name))
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                "ss_network_alpha": str(alpha if alpha is not None else rank), "renderfarm.base": base}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, planned, dtype, metadata)
    return path
