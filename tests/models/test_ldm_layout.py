"""The diffusers -> LDM mapping on the full-size SD1.5 and SDXL shapes, checked against
diffusers' own LDM -> diffusers converters on meta tensors (no memory), and against names
and shapes of the LDM layout known from the original code."""
from __future__ import annotations

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)

from farm.models.arch import arch_info
from farm.models.ldm_layout import LdmTensor, Op, open_clip_layout, unet_layout
from farm.models.load import component_specs, empty_model
from farm.models.make import ldm_entries


def full_layout(arch: str):
    """component -> (meta model, its diffusers shapes, the LDM file's meta tensors)."""
    out = {}
    for spec in component_specs(arch_info(arch)):
        model = empty_model(spec)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        ldm = {e.key: torch.empty(e.shape(shapes), device="meta") for e in ldm_entries(spec, shapes)}
        out[spec.folder] = (spec, model, shapes, ldm)
    return out


def bare(keys_shapes: dict) -> dict:
    return {k.removeprefix("text_model."): tuple(v) for k, v in keys_shapes.items()}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_full_size_layout_converts_back_to_every_diffusers_tensor(arch):
    for name, (spec, model, shapes, ldm) in full_layout(arch).items():
        if name == "unet":
            back = convert_ldm_unet_checkpoint(ldm, dict(spec.config))
        elif name == "vae":
            back = convert_ldm_vae_checkpoint(ldm, dict(spec.config))
        elif spec.text.with_projection:
            back = convert_open_clip_checkpoint(model, ldm, prefix=spec.text.ldm_prefix)
        else:
            back = convert_ldm_clip_checkpoint(ldm)
        assert bare({k: v.shape for k, v in back.items()}) == bare(shapes), f"{arch} {name}"


@pytest.mark.parametrize("arch, expected", [("sd15", "v1"), ("sdxl", "xl_base")])
def test_diffusers_detector_recognises_the_full_size_layout(arch, expected):
    ldm = {k: v for *_, tensors in full_layout(arch).values() for k, v in tensors.items()}
    assert infer_diffusers_model_type(ldm) == expected


def test_sd15_names_match_the_original_layout():
    ldm = {k: tuple(v.shape) for *_, tensors in full_layout("sd15").values() for k, v in tensors.items()}
    u = "model.diffusion_model."
    # openaimodel: 12 input blocks, 3-part middle, 12 output blocks; upsamplers after attention
    assert ldm[u + "input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert ldm[u + "input_blocks.4.0.skip_connection.weight"] == (640, 320, 1, 1)
    assert ldm[u + "input_blocks.8.1.proj_in.weight"] == (1280, 1280, 1, 1)  # conv proj in SD1
    assert ldm[u + "input_blocks.9.0.op.weight"] == (1280, 1280, 3, 3)
    assert ldm[u + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 768)
    assert ldm[u + "output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert ldm[u + "output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert ldm[u + "output_blocks.11.0.skip_connection.weight"] == (320, 640, 1, 1)
    assert ldm[u + "time_embed.2.weight"] == (1280, 1280)
    assert not any(k.startswith(u + "label_emb") for k in ldm)
    assert sum(k.startswith(u + "input_blocks.") and k.endswith(".0.in_layers.0.weight") for k in ldm) == 8
    assert ldm["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert ldm["first_stage_model.encoder.mid.attn_1.proj_out.weight"] == (512, 512, 1, 1)
    assert ldm["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)
    assert ldm["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"] == (768, 3072)


def test_sdxl_names_match_the_original_layout():
    ldm = {k: tuple(v.shape) for *_, tensors in full_layout("sdxl").values() for k, v in tensors.items()}
    u = "model.diffusion_model."
    assert ldm[u + "label_emb.0.0.weight"] == (1280, 2816)
    assert ldm[u + "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"] == (1280, 2048)
    assert ldm[u + "input_blocks.4.1.proj_in.weight"] == (640, 640)  # linear proj in SDXL
    assert not any(k.startswith(u + "input_blocks.1.1.") for k in ldm)  # first level: no attention
    assert ldm[u + "output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    assert ldm[u + "output_blocks.5.2.conv.weight"] == (640, 640, 3, 3)
    assert not any(k.startswith(u + "output_blocks.8.") and ".conv." in k for k in ldm)
    g = "conditioner.embedders.1.model."
    assert ldm[g + "transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert ldm[g + "text_projection"] == (1280, 1280)
    assert ldm[g + "positional_embedding"] == (77, 1280)
    assert ldm[g + "token_embedding.weight"] == (49408, 1280)
    assert ldm["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] == (768,)


def test_ops_build_what_they_promise():
    q, k, v = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    fused = LdmTensor("x", ("q", "k", "v"), Op.CONCAT)
    assert fused.shape({"q": (4, 3), "k": (4, 3), "v": (4, 3)}) == (12, 3)
    assert torch.equal(fused.build({"q": q, "k": k, "v": v})[4:8], k)
    conv = LdmTensor("x", ("w",), Op.CONV_1X1)
    assert conv.build({"w": q}).shape == (4, 3, 1, 1) and torch.equal(conv.build({"w": q})[:, :, 0, 0], q)
    assert torch.equal(LdmTensor("x", ("w",), Op.TRANSPOSE).build({"w": q}), q.t())


def test_unknown_names_are_refused_not_dropped():
    with pytest.raises(ValueError, match="no LDM name"):
        unet_layout(["down_blocks.0.motion_modules.0.proj.weight"], {"layers_per_block": 2})
    with pytest.raises(ValueError, match="no OpenCLIP name"):
        open_clip_layout(["text_model.encoder.layers.0.extra.weight"], "p.")
