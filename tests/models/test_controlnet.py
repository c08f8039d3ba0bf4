"""ControlNet files: farm's writer and reader agree in every layout, the original layout
has ComfyUI's names, a user's file without a config is read with the family's standard one,
and what is not a usable ControlNet is refused by name."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from farm.errors import (
    CheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from farm.models.controlnet import CONFIG_METADATA_KEY, load_controlnet
from farm.models.make import random_tensor
from farm.models.make_controlnet import (
    controlnet_config,
    controlnet_shapes,
    ldm_layout,
    make_controlnet,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("arch", ["tiny-controlnet-sd15", "tiny-controlnet-sdxl"])
@pytest.mark.parametrize("name,layout", [("cn.safetensors", "ldm"), ("cn.safetensors", "diffusers"),
                                         ("folder", "ldm")])
def test_every_layout_reads_back_the_weights_it_was_written_with(tmp_path, arch, name, layout):
    path = make_controlnet(arch, tmp_path / name, seed=4, layout=layout)
    net = load_controlnet(path, CPU, torch.float32)
    assert net.family == arch.rpartition("-")[2]
    state = net.model.state_dict()
    assert state and all(torch.equal(v, random_tensor(4, "controlnet", k, tuple(v.shape))) for k, v in state.items())


def test_the_original_layout_has_comfyuis_names():
    config = controlnet_config("sd15")
    keys = {e.key for e in ldm_layout(controlnet_shapes(config), config)}  # full size, planned on meta
    assert all(k.startswith("control_model.") for k in keys)
    blocks = {int(k.split(".")[2]) for k in keys if k.startswith("control_model.input_blocks.")}
    zero_convs = {int(k.split(".")[2]) for k in keys if k.startswith("control_model.zero_convs.")}
    hints = {int(k.split(".")[2]) for k in keys if k.startswith("control_model.input_hint_block.")}
    assert blocks == zero_convs == set(range(12))  # one zero conv per input block, as cldm
    assert hints == {0, 2, 4, 6, 8, 10, 12, 14}  # convolutions between SiLUs
    assert {"control_model.middle_block_out.0.weight", "control_model.time_embed.0.weight",
            "control_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"} <= keys


def test_a_file_without_farms_config_takes_the_familys_standard_one(tmp_path):
    # a tiny file stripped of its header config, one attention widened to CLIP-L's 768, is
    # read as a user's SD1.5 ControlNet: the full-size config is inferred from that width,
    # and the other tiny tensors do not fit it, which is said plainly
    path = make_controlnet("tiny-controlnet-sd15", tmp_path / "cn.safetensors", seed=1)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    context = "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    tensors[context] = torch.zeros(tensors[context].shape[0], 768)
    stripped = tmp_path / "stripped.safetensors"
    save_file(tensors, str(stripped))
    with pytest.raises(CheckpointError, match="do not fit the expected architecture"):
        load_controlnet(stripped, CPU, torch.float32)
    # with a config.json beside it (the diffusers folder's file picked by name) it loads
    folder = make_controlnet("tiny-controlnet-sd15", tmp_path / "folder", seed=1)
    config = json.loads((folder / "config.json").read_text())
    assert config["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    net = load_controlnet(folder / "diffusion_pytorch_model.safetensors", CPU, torch.float32)
    assert net.family == "sd15"


def test_what_is_not_a_usable_controlnet_is_refused(tmp_path, tiny_models):
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_controlnet(tmp_path / "cn.pth", CPU, torch.float32)
    with pytest.raises(UnsupportedCheckpointError, match="not a ControlNet"):
        load_controlnet(tiny_models / "checkpoints" / "tiny-sd15.safetensors", CPU, torch.float32)
    save_file({"lora_controlnet": torch.zeros(1)}, str(tmp_path / "control-lora.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match="Control-LoRA"):
        load_controlnet(tmp_path / "control-lora.safetensors", CPU, torch.float32)
    path = make_controlnet("tiny-controlnet-sd15", tmp_path / "cn.safetensors", seed=1)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    context = "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    tensors[context] = torch.zeros(tensors[context].shape[0], 1024)  # SD2.x's text width
    save_file(tensors, str(tmp_path / "sd2.safetensors"), {k: v for k, v in meta.items() if k != CONFIG_METADATA_KEY})
    with pytest.raises(UnsupportedCheckpointError, match="width 1024"):
        load_controlnet(tmp_path / "sd2.safetensors", CPU, torch.float32)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_controlnet(tmp_path / "broken.safetensors", CPU, torch.float32)
