"""load_checkpoint: refusals before reading, typed errors, dtypes, tokenizers, and models
that compute (the same outputs from the single file and the folder)."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from farm.errors import (
    CheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from farm.models.load import load_checkpoint
from farm.models.make import diffusers_state_dict

CPU = torch.device("cpu")


def read_all(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(tmp_path / "nope.safetensors", CPU, torch.float32)
    assert not isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl", ".CKPT"])
def test_pickle_files_are_refused_by_name(tmp_path, suffix, tiny_checkpoints):
    garbage = tmp_path / f"model{suffix}"
    garbage.write_bytes(b"\x80\x04garbage that is no pickle at all")
    with pytest.raises(UnsafeCheckpointError, match="safetensors"):
        load_checkpoint(garbage, CPU, torch.float32)
    # a readable safetensors body under a pickle name is refused too: the name decides, unread
    disguised = tmp_path / f"real{suffix}"
    shutil.copy(tiny_checkpoints["tiny-sd15"].single_file, disguised)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(disguised, CPU, torch.float32)


def test_folder_with_only_pickle_weights_is_refused(tmp_path, tiny_checkpoints):
    folder = shutil.copytree(tiny_checkpoints["tiny-sd15"].folder, tmp_path / "pickled")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_checkpoint(folder, CPU, torch.float32)


def test_fp16_variant_of_a_folder_is_found(tmp_path, tiny_checkpoints):
    made = tiny_checkpoints["tiny-sd15"]
    folder = shutil.copytree(made.folder, tmp_path / "variant")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    ckpt = load_checkpoint(folder, CPU, torch.float32)
    expected = diffusers_state_dict("tiny-sd15", "unet", seed=made.seed)
    assert torch.equal(ckpt.unet.state_dict()["conv_in.weight"], expected["conv_in.weight"])


def test_garbage_safetensors_and_unknown_formats_are_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad, CPU, torch.float32)
    other = tmp_path / "model.gguf"
    other.write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"\.safetensors files and diffusers folders"):
        load_checkpoint(other, CPU, torch.float32)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(CheckpointError, match="model_index.json"):
        load_checkpoint(plain, CPU, torch.float32)


def test_unsupported_layout_is_named(tmp_path):
    sd2 = tmp_path / "sd2.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3),
               "cond_stage_model.model.token_embedding.weight": torch.zeros(4, 2)}, str(sd2))
    with pytest.raises(UnsupportedCheckpointError, match="Stable Diffusion 2"):
        load_checkpoint(sd2, CPU, torch.float32)


def test_tensors_of_the_wrong_shape_are_a_checkpoint_error(tmp_path, tiny_checkpoints):
    tensors, metadata = read_all(tiny_checkpoints["tiny-sd15"].single_file)
    key = "model.diffusion_model.out.2.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata)
    with pytest.raises(CheckpointError, match="unet weights do not fit"):
        load_checkpoint(broken, CPU, torch.float32)


def test_old_files_with_clip_position_ids_load(tmp_path, tiny_checkpoints):
    made = tiny_checkpoints["tiny-sd15"]
    tensors, metadata = read_all(made.single_file)
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    path = tmp_path / "with_ids.safetensors"
    save_file(tensors, str(path), metadata)
    ckpt = load_checkpoint(path, CPU, torch.float32)
    expected = diffusers_state_dict("tiny-sd15", "text_encoder", seed=made.seed)
    got = ckpt.text_encoders[0].state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_models_are_frozen_and_in_the_asked_dtype_with_an_fp32_vae_on_cpu(tiny_checkpoints):
    made = tiny_checkpoints["tiny-sdxl"]
    ckpt = load_checkpoint(made.single_file, CPU, torch.bfloat16)
    assert ckpt.arch.name == "tiny-sdxl" and ckpt.latent_scale_factor == 0.13025
    assert ckpt.source == made.single_file and ckpt.size_bytes == made.single_file.stat().st_size
    assert ckpt.unet.dtype == torch.bfloat16 and ckpt.vae.dtype == torch.float32
    assert [m.dtype for m in ckpt.text_encoders] == [torch.bfloat16, torch.bfloat16]
    assert type(ckpt.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
    for model in (ckpt.unet, ckpt.vae, *ckpt.text_encoders):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        assert all(p.device == CPU for p in model.parameters())


@pytest.mark.parametrize("fmt", ["single_file", "folder"])
def test_tokenizers_pad_as_the_real_encoders_do(tiny_checkpoints, fmt):
    ckpt = load_checkpoint(getattr(tiny_checkpoints["tiny-sdxl"], fmt), CPU, torch.float32)
    clip_l, clip_g = ckpt.tokenizers
    assert clip_l.model_max_length == clip_g.model_max_length == 77
    ids_l = clip_l("a photo of a cat", padding="max_length", max_length=77).input_ids
    ids_g = clip_g("a photo of a cat", padding="max_length", max_length=77).input_ids
    # <|startoftext|> a photo of a cat <|endoftext|>, then the pad: <|endoftext|> for CLIP-L, "!" (id 0) for bigG
    assert ids_l[:7] == ids_g[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert set(ids_l[7:]) == {49407} and set(ids_g[7:]) == {0}


def unet_out(ckpt, text: torch.Tensor, t: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    added = None
    if ckpt.arch.name == "tiny-sdxl":
        added = {"text_embeds": torch.randn(1, 32, generator=gen), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}
    return ckpt.unet(latents, torch.tensor([t]), encoder_hidden_states=text, added_cond_kwargs=added).sample


@pytest.mark.parametrize("arch", ["tiny-sd15", "tiny-sdxl"])
def test_models_compute_and_both_formats_agree(tiny_checkpoints, arch):
    made = tiny_checkpoints[arch]
    single = load_checkpoint(made.single_file, CPU, torch.float32)
    folder = load_checkpoint(made.folder, CPU, torch.float32)
    width = single.unet.config.cross_attention_dim
    text_a = torch.randn(1, 77, width, generator=torch.Generator().manual_seed(1))
    text_b = torch.randn(1, 77, width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = unet_out(single, text_a, 500.0)
        assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
        # same weights; kernels may differ in the last bits with the tensors' memory layout
        torch.testing.assert_close(unet_out(folder, text_a, 500.0), out, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out, unet_out(single, text_b, 500.0))  # the text reaches the UNet
        assert not torch.allclose(out, unet_out(single, text_a, 50.0))  # so does the timestep
        image = single.vae.decode(out).sample
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()  # latents are H/8
        ids = single.tokenizers[0]("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        other = single.tokenizers[0]("a dog", padding="max_length", max_length=77, return_tensors="pt").input_ids
        encoded = [te(ids).last_hidden_state for te in single.text_encoders]
        assert not torch.allclose(encoded[0], single.text_encoders[0](other).last_hidden_state)
        assert sum(e.shape[-1] for e in encoded) == width
        for te_single, te_folder in zip(single.text_encoders, folder.text_encoders):
            torch.testing.assert_close(te_folder(ids)[0], te_single(ids)[0], atol=1e-5, rtol=1e-5)
