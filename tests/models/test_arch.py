"""Architecture detection from LDM names, and the shipped configs checked against the
original LDM configs (through diffusers' own translation) and known parameter counts."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

from farm.errors import CheckpointError, UnsupportedCheckpointError
from farm.models.arch import (
    ARCHES,
    CONFIGS_METADATA_KEY,
    Arch,
    arch_info,
    detect_arch,
    detect_family,
    shipped_configs,
)
from farm.models.load import component_specs, empty_model

SD1_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
    "first_stage_model.encoder.conv_in.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
]
SDXL_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.label_emb.0.0.weight",
    "first_stage_model.encoder.conv_in.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
]


def test_sd1_and_sdxl_are_detected_with_the_full_size_configs():
    sd1 = detect_arch(SD1_KEYS, None)
    assert (sd1.arch, sd1.name, sd1.latent_scale_factor, sd1.default_resolution) == (Arch.SD15, "sd15", 0.18215, 512)
    assert [t.name for t in sd1.text_encoders] == ["clip_l"]
    xl = detect_arch(SDXL_KEYS, {"format": "pt"})
    assert (xl.arch, xl.name, xl.latent_scale_factor, xl.default_resolution) == (Arch.SDXL, "sdxl", 0.13025, 1024)
    assert [(t.name, t.pad_token) for t in xl.text_encoders] == [("clip_l", "<|endoftext|>"), ("clip_g", "!")]
    assert xl.configs == shipped_configs("sdxl")


def test_configs_in_the_header_are_used():
    configs = shipped_configs("tiny-sdxl")
    info = detect_arch(SDXL_KEYS, {CONFIGS_METADATA_KEY: configs.to_json("tiny-sdxl")})
    assert info.name == "tiny-sdxl" and info.configs == configs and info.default_resolution == 64


def test_header_configs_of_the_wrong_family_are_refused():
    with pytest.raises(CheckpointError, match="tiny-sdxl"):
        detect_arch(SD1_KEYS, {CONFIGS_METADATA_KEY: shipped_configs("tiny-sdxl").to_json("tiny-sdxl")})
    with pytest.raises(CheckpointError, match="malformed"):
        detect_arch(SD1_KEYS, {CONFIGS_METADATA_KEY: "{not json"})


@pytest.mark.parametrize("keys, named", [
    (["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", *SD1_KEYS[:3]], "Stable Diffusion 2"),
    (["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"], "Stable Diffusion 3"),
    (["double_blocks.0.img_attn.norm.key_norm.scale"], "Flux"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA"),
    (["down_blocks.0.resnets.0.conv1.weight", "conv_in.weight"], "down_blocks"),
    (["model.diffusion_model.input_blocks.0.0.weight"], "text encoders"),
    (SD1_KEYS[:1] + SD1_KEYS[3:], "no VAE"),
])
def test_other_layouts_are_refused_naming_what_was_found(keys, named):
    with pytest.raises(UnsupportedCheckpointError, match=named):
        detect_family(keys)


def test_the_sdxl_refiner_is_its_own_family():
    keys = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
            "first_stage_model.encoder.conv_in.weight", "conditioner.embedders.0.model.text_projection"]
    assert detect_family(keys) is Arch.SDXL_REFINER


def test_inpainting_unet_is_refused_by_its_input_channels():
    shapes = {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}
    with pytest.raises(UnsupportedCheckpointError, match="9 input channels"):
        detect_family(SD1_KEYS, shapes)
    assert detect_family(SD1_KEYS, {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}) is Arch.SD15


# The UNet parameters of the original LDM configs (CompVis v1-inference.yaml; Stability's
# sd_xl_base.yaml), as diffusers' own translation reads them.
V1_INFERENCE = {"model": {"params": {
    "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "model_channels": 320,
                               "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
                               "channel_mult": [1, 2, 4, 4], "num_heads": 8, "transformer_depth": 1,
                               "context_dim": 768}},
    "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
SD_XL_BASE = {"model": {"params": {
    "network_config": {"params": {"adm_in_channels": 2816, "num_classes": "sequential", "in_channels": 4,
                                  "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2],
                                  "num_res_blocks": 2, "channel_mult": [1, 2, 4], "num_head_channels": 64,
                                  "use_linear_in_transformer": True, "transformer_depth": [1, 2, 10],
                                  "context_dim": 2048}},
    "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}


@pytest.mark.parametrize("arch, original, model_type_key", [
    ("sd15", V1_INFERENCE, None),  # no marker: diffusers' fallback type is v1
    ("sdxl", SD_XL_BASE, "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"),
])
def test_shipped_unet_config_matches_the_original_ldm_config(arch, original, model_type_key):
    marker = {model_type_key: torch.empty(0)} if model_type_key else {}  # sets the image size (512 / 1024)
    derived = create_unet_diffusers_config_from_ldm(original, marker)
    shipped = shipped_configs(arch).unet
    for key, value in derived.items():
        if key == "transformer_layers_per_block" and value == 1:
            assert shipped.get(key, 1) == 1
        elif value is not None or key in shipped:
            assert json.loads(json.dumps(value)) == shipped.get(key), key


# Parameter counts of the released models (diffusers / transformers builds of the original weights).
KNOWN_PARAMETERS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_full_size_configs_have_the_released_parameter_counts(arch):
    counts = {spec.folder: sum(p.numel() for p in empty_model(spec).parameters())
              for spec in component_specs(arch_info(arch))}
    assert counts == KNOWN_PARAMETERS[arch]


def test_shipped_configs_are_consistent():
    for name in ARCHES:
        info = arch_info(name)
        configs = info.configs
        texts = configs.text_encoders
        assert configs.vae["latent_channels"] == configs.unet["in_channels"] == 4
        assert 2 ** (len(configs.vae["block_out_channels"]) - 1) == 8  # latents are H/8, as in the real models
        assert configs.unet["cross_attention_dim"] == sum(t["hidden_size"] for t in texts)
        assert all(t["vocab_size"] == 49408 and t["max_position_embeddings"] == 77 for t in texts)
        assert configs.vae["scaling_factor"] == info.arch.latent_scale_factor
        if info.arch is Arch.SDXL:
            time_dim = configs.unet["addition_time_embed_dim"]
            assert configs.unet["projection_class_embeddings_input_dim"] == 6 * time_dim + texts[1]["projection_dim"]
    assert arch_info("sd15").default_resolution == Arch.SD15.default_resolution
    assert arch_info("sdxl").default_resolution == Arch.SDXL.default_resolution
    with pytest.raises(CheckpointError, match="unknown architecture"):
        arch_info("sd3")
