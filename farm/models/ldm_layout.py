"""diffusers/transformers tensor names -> the LDM ("original") single-file layout, for writing.

The LDM layout is what ComfyUI and A1111 read: model.diffusion_model.* (openaimodel UNet),
first_stage_model.* (taming-style VAE), cond_stage_model.transformer.* or
conditioner.embedders.N.* (text encoders). Reading goes the other way through diffusers'
own converters (farm.models.load), so a round trip checks this module against them.

Each function maps a component's diffusers state-dict names to a list of LdmTensor: the
LDM name, the diffusers tensors it is made from and how. Only names and shapes go in, so a
full-size file can be planned without holding its weights, then written one tensor at a
time. The mapping is generic over the number of levels, layers_per_block and which levels
have attention; a name it does not know raises, so a model that does not fit is never
written half-mapped.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import torch


class Op(Enum):
    COPY = "copy"
    CONV_1X1 = "conv_1x1"  # LDM's VAE attention uses 1x1 convs where diffusers has Linear layers
    TRANSPOSE = "transpose"  # OpenCLIP applies text_projection as x @ P; HF's Linear holds P.T
    CONCAT = "concat"  # OpenCLIP fuses q, k, v into one in_proj along dim 0


@dataclass(frozen=True)
class LdmTensor:
    key: str  # full LDM name, prefix included
    sources: tuple[str, ...]  # diffusers names within one component
    op: Op

    def shape(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
        first = tuple(shapes[self.sources[0]])
        if self.op is Op.CONV_1X1:
            return (*first, 1, 1)
        if self.op is Op.TRANSPOSE:
            return first[::-1]
        if self.op is Op.CONCAT:
            return (sum(shapes[s][0] for s in self.sources), *first[1:])
        return first

    def build(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [tensors[s] for s in self.sources]
        if self.op is Op.CONV_1X1:
            return parts[0][:, :, None, None]
        if self.op is Op.TRANSPOSE:
            return parts[0].T.contiguous()
        if self.op is Op.CONCAT:
            return torch.cat(parts, dim=0)
        return parts[0]


def _copy(prefix: str, ldm: str, key: str) -> LdmTensor:
    return LdmTensor(prefix + ldm, (key,), Op.COPY)


def _rename_head(rest: str, renames: Mapping[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{renames.get(head, head)}.{tail}"


# --- UNet ------------------------------------------------------------------------------

_UNET_TOP = {  # diffusers module -> LDM module
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled-text + size/crop embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _unet_key(key: str, per_level: int, up_with_attention: set[int]) -> str:
    """openaimodel numbers its blocks flat: input_blocks.0 is conv_in, then per level
    `per_level` (resnet[, attention]) pairs and a downsampler; output_blocks has one more
    pair per level, the upsampler riding in the last one after its attention if any."""
    for module, ldm in _UNET_TOP.items():
        if key.startswith(module + "."):
            return ldm + key[len(module):]
    p = key.split(".")
    rest = ".".join(p[4:]) if len(p) > 4 else ""
    if p[0] == "down_blocks":
        level, kind, j = int(p[1]), p[2], int(p[3])
        first = 1 + level * (per_level + 1)
        if kind == "resnets":
            return f"input_blocks.{first + j}.0.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"input_blocks.{first + j}.1.{rest}"
        if kind == "downsamplers" and rest.startswith("conv."):
            return f"input_blocks.{first + per_level}.0.op.{rest[len('conv.'):]}"
    elif p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
        if kind == "resnets" and j in (0, 1):
            return f"middle_block.{2 * j}.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions" and j == 0:
            return f"middle_block.1.{rest}"
    elif p[0] == "up_blocks":
        level, kind, j = int(p[1]), p[2], int(p[3])
        first = level * (per_level + 1)
        if kind == "resnets":
            return f"output_blocks.{first + j}.0.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"output_blocks.{first + j}.1.{rest}"
        if kind == "upsamplers":
            slot = 2 if level in up_with_attention else 1
            return f"output_blocks.{first + per_level}.{slot}.{rest}"
    raise ValueError(f"no LDM name for UNet tensor {key!r}")


def unet_layout(keys: Iterable[str], config: Mapping, prefix: str = "model.diffusion_model.") -> list[LdmTensor]:
    keys = list(keys)
    per_level = config["layers_per_block"]
    if not isinstance(per_level, int):
        raise ValueError("the LDM UNet layout needs one layers_per_block for every level")
    up_with_attention = {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}
    return [_copy(prefix, _unet_key(k, per_level, up_with_attention), k) for k in keys]


# --- VAE -------------------------------------------------------------------------------

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def _vae_tensor(key: str, levels: int, prefix: str) -> LdmTensor:
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return _copy(prefix, key, key)
    p = rest.split(".")
    if p[0] in ("conv_in", "conv_out"):
        return _copy(prefix, key, key)
    if p[0] == "conv_norm_out":
        return _copy(prefix, f"{part}.norm_out.{'.'.join(p[1:])}", key)
    if p[0] in ("down_blocks", "up_blocks") and len(p) > 4:
        # the decoder's up blocks run from the lowest resolution, LDM's "up" list from the highest
        level = int(p[1]) if p[0] == "down_blocks" else levels - 1 - int(p[1])
        kind, j, tail = p[2], p[3], ".".join(p[4:])
        group = "down" if p[0] == "down_blocks" else "up"
        if kind == "resnets":
            return _copy(prefix, f"{part}.{group}.{level}.block.{j}.{_rename_head(tail, _VAE_RESNET)}", key)
        if kind in ("downsamplers", "upsamplers"):
            sampler = "downsample" if kind == "downsamplers" else "upsample"
            return _copy(prefix, f"{part}.{group}.{level}.{sampler}.{tail}", key)
    if p[0] == "mid_block" and len(p) > 3:
        kind, j, tail = p[1], int(p[2]), ".".join(p[3:])
        if kind == "resnets":
            return _copy(prefix, f"{part}.mid.block_{j + 1}.{_rename_head(tail, _VAE_RESNET)}", key)
        if kind == "attentions" and j == 0:
            head, _, param = tail.partition(".")
            param = param[len("0."):] if head == "to_out" else param  # to_out.0.weight -> proj_out.weight
            ldm = f"{part}.mid.attn_1.{_VAE_ATTENTION[head]}.{param}"
            op = Op.CONV_1X1 if head != "group_norm" and param == "weight" else Op.COPY
            return LdmTensor(prefix + ldm, (key,), op)
    raise ValueError(f"no LDM name for VAE tensor {key!r}")


def vae_layout(keys: Iterable[str], config: Mapping, prefix: str = "first_stage_model.") -> list[LdmTensor]:
    levels = len(config["block_out_channels"])
    return [_vae_tensor(k, levels, prefix) for k in keys]


# --- text encoders -----------------------------------------------------------------------

def clip_layout(keys: Iterable[str], prefix: str) -> list[LdmTensor]:
    """transformers' CLIPTextModel under `prefix` + "text_model." (SD1's and SDXL's CLIP-L).
    Newer transformers flatten CLIPTextModel (no text_model. in its own names)."""
    return [_copy(prefix, k if k.startswith("text_model.") else "text_model." + k, k) for k in keys]


_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                    "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def open_clip_layout(keys: Iterable[str], prefix: str) -> list[LdmTensor]:
    """transformers' CLIPTextModelWithProjection -> OpenCLIP names under `prefix` (SDXL's bigG)."""
    out: list[LdmTensor] = []
    for key in keys:
        name = key[len("text_model."):] if key.startswith("text_model.") else key
        if name == "text_projection.weight":
            out.append(LdmTensor(prefix + "text_projection", (key,), Op.TRANSPOSE))
        elif name in _OPEN_CLIP_TOP:
            out.append(_copy(prefix, _OPEN_CLIP_TOP[name], key))
        elif name.startswith("encoder.layers."):
            p = name.split(".")
            layer, module, param = p[2], ".".join(p[3:-1]), p[-1]
            block = f"transformer.resblocks.{layer}."
            if module == "self_attn.q_proj":
                qkv = tuple(key.replace(".q_proj.", f".{x}_proj.") for x in "qkv")
                out.append(LdmTensor(f"{prefix}{block}attn.in_proj_{param}", qkv, Op.CONCAT))
            elif module in ("self_attn.k_proj", "self_attn.v_proj"):
                continue  # fused into in_proj with q
            elif module in _OPEN_CLIP_LAYER:
                out.append(_copy(prefix, f"{block}{_OPEN_CLIP_LAYER[module]}.{param}", key))
            else:
                raise ValueError(f"no OpenCLIP name for text encoder tensor {key!r}")
        else:
            raise ValueError(f"no OpenCLIP name for text encoder tensor {key!r}")
    return out
