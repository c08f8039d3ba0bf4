"""make_checkpoint: files in the real formats, whose every tensor reads back through
diffusers' own LDM converters (single file) or from_pretrained (folder) as written."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    infer_diffusers_model_type,
    is_clip_model,
    is_clip_sdxl_model,
    is_open_clip_sdxl_model,
)
from safetensors import safe_open

from farm.errors import CheckpointError
from farm.models.arch import CONFIGS_METADATA_KEY, shipped_configs
from farm.models.load import load_checkpoint
from farm.models.make import diffusers_state_dict, make_checkpoint

CPU = torch.device("cpu")
ARCH_COMPONENTS = {"tiny-sd15": ("unet", "vae", "text_encoder"),
                   "tiny-sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


def loaded_components(ckpt) -> dict[str, torch.nn.Module]:
    return {"unet": ckpt.unet, "vae": ckpt.vae,
            **{name: model for name, model in zip(("text_encoder", "text_encoder_2"), ckpt.text_encoders)}}


def assert_same_weights(loaded: torch.nn.Module, expected: dict[str, torch.Tensor], what: str) -> None:
    got = loaded.state_dict()
    assert set(got) == set(expected), what
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{what}: {key} differs"


@pytest.mark.parametrize("arch", ["tiny-sd15", "tiny-sdxl"])
@pytest.mark.parametrize("fmt", ["single_file", "folder"])
def test_every_tensor_reads_back_as_built_from_the_seed(tiny_checkpoints, arch, fmt):
    made = tiny_checkpoints[arch]
    ckpt = load_checkpoint(getattr(made, fmt), CPU, torch.float32)
    models = loaded_components(ckpt)
    assert set(models) == set(ARCH_COMPONENTS[arch])
    for name, model in models.items():
        assert_same_weights(model, diffusers_state_dict(arch, name, seed=made.seed), f"{arch} {fmt} {name}")


def test_the_seed_changes_every_weight_tensor():
    a = diffusers_state_dict("tiny-sd15", "unet", seed=0)
    b = diffusers_state_dict("tiny-sd15", "unet", seed=1)
    assert all(not torch.equal(a[k], b[k]) for k in a)


def test_weights_are_not_degenerate():
    weights = diffusers_state_dict("tiny-sdxl", "unet", seed=0)
    norms = [v for k, v in weights.items() if v.ndim == 1 and k.endswith("norm1.weight")]
    assert norms and all(0.5 < v.mean() < 1.5 for v in norms)
    convs = [v for v in weights.values() if v.ndim == 4]
    assert all(v.std() > 0 for v in convs)


def test_diffusers_own_detectors_recognise_the_single_files(tiny_checkpoints):
    def tensors(arch):
        with safe_open(str(tiny_checkpoints[arch].single_file), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    sd15 = tensors("tiny-sd15")
    assert infer_diffusers_model_type(sd15) == "v1" and is_clip_model(sd15)
    xl = tensors("tiny-sdxl")  # xl_base's own marker is layer 9 of bigG: only the full size has it
    assert is_clip_sdxl_model(xl) and is_open_clip_sdxl_model(xl)


def test_sd1_single_file_uses_the_ldm_names_and_shapes(tiny_checkpoints):
    with safe_open(str(tiny_checkpoints["tiny-sd15"].single_file), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        metadata = f.metadata()
    # facts of the LDM layout (CompVis openaimodel / taming VAE / FrozenCLIPEmbedder)
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (32, 4, 3, 3)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in shapes
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in shapes  # the first downsampler
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in shapes  # upsampler of an attention-free level
    assert "model.diffusion_model.time_embed.0.weight" in shapes
    assert "model.diffusion_model.out.2.weight" in shapes
    c = 32  # the VAE's mid width
    for name in ("q", "k", "v", "proj_out"):
        assert shapes[f"first_stage_model.encoder.mid.attn_1.{name}.weight"] == (c, c, 1, 1)
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in shapes
    assert "first_stage_model.encoder.down.0.downsample.conv.weight" in shapes
    assert shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 32)
    assert all(k.split(".")[0] in ("model", "first_stage_model", "cond_stage_model") for k in shapes)
    assert all(v for v in shapes.values())
    stored = json.loads(metadata[CONFIGS_METADATA_KEY])
    assert stored["arch"] == "tiny-sd15" and stored["unet"] == shipped_configs("tiny-sd15").unet


def test_sdxl_single_file_uses_the_openclip_layout(tiny_checkpoints):
    made = tiny_checkpoints["tiny-sdxl"]
    with safe_open(str(made.single_file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    g = "conditioner.embedders.1.model."
    assert f"{g}positional_embedding" in tensors and f"{g}ln_final.weight" in tensors
    hf = diffusers_state_dict("tiny-sdxl", "text_encoder_2", seed=made.seed)
    layer = "text_model.encoder.layers.1.self_attn."
    fused = torch.cat([hf[f"{layer}{x}_proj.weight"] for x in "qkv"])
    assert torch.equal(tensors[f"{g}transformer.resblocks.1.attn.in_proj_weight"], fused)
    assert torch.equal(tensors[f"{g}text_projection"], hf["text_projection.weight"].T)
    assert torch.equal(tensors[f"{g}transformer.resblocks.0.mlp.c_fc.bias"], hf["text_model.encoder.layers.0.mlp.fc1.bias"])
    assert "model.diffusion_model.label_emb.0.0.weight" in tensors
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in tensors


def test_folder_has_the_diffusers_layout(tiny_checkpoints):
    folder = tiny_checkpoints["tiny-sdxl"].folder
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    for sub, weights in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                         ("text_encoder", "model"), ("text_encoder_2", "model")]:
        assert (folder / sub / f"{weights}.safetensors").is_file()
        assert (folder / sub / "config.json").is_file()
    assert not list(folder.rglob("*.bin"))
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (0.00085, 0.012,
                                                                                             "scaled_linear")
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())  # the hub's names


def test_existing_folder_is_not_overwritten(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists"):
        make_checkpoint("tiny-sd15", target)
    assert (target / "keep.txt").read_text() == "mine"


def test_unknown_arch_and_pickle_target_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="unknown architecture"):
        make_checkpoint("sd3", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="never pickles"):
        make_checkpoint("tiny-sd15", tmp_path / "x.ckpt")
