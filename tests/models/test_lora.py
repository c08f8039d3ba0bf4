"""LoRA files (both key layouts) bound to tiny models and patched in place: the deltas are
the formula's, every layer of a farm-made file finds its module, and the base comes back
bit-identical."""
import math

import pytest
import torch
from safetensors.torch import load_file

from farm.cli import main
from farm.models.load import load_checkpoint
from farm.models.lora import LoraError, bind, parse_lora, patched, read_lora
from farm.models.lora_keys import (
    TE1_ROOT,
    TE2_ROOT,
    UNET_ROOT,
    clip_key_maps,
    unet_key_map,
)
from farm.models.make_lora import make_lora


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoints):
    return {arch: load_checkpoint(c.single_file, torch.device("cpu"), torch.float32)
            for arch, c in tiny_checkpoints.items()}


def roots_of(ckpt):
    texts = dict(zip((TE1_ROOT, TE2_ROOT), ckpt.text_encoders))
    return {UNET_ROOT: ckpt.unet, **texts}


def bind_all(lora, ckpt, strength=1.0):
    roots = roots_of(ckpt)
    maps = {UNET_ROOT: unet_key_map(ckpt.unet), **clip_key_maps(ckpt.text_encoders)}
    return bind(lora, strength, maps, roots)


def snapshot(ckpt):
    return {(root, k): v.clone() for root, m in roots_of(ckpt).items() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("layout", ["kohya", "peft"])
@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_every_layer_binds_and_the_base_comes_back_bit_identical(checkpoints, tmp_path, base, layout):
    path = make_lora(f"tiny-lora-{base}", tmp_path / "l.safetensors", seed=1, layout=layout)
    lora = read_lora(path)
    ckpt = checkpoints[f"tiny-{base}"]
    bound, used = bind_all(lora, ckpt)
    assert used == set(lora.layers)  # nothing of a farm-made file is skipped
    roots_hit = {root for root, _, _ in bound.targets}
    assert roots_hit == ({UNET_ROOT, TE1_ROOT} if base == "sd15" else {UNET_ROOT, TE1_ROOT, TE2_ROOT})
    before = snapshot(ckpt)
    with patched(roots_of(ckpt), [bound]) as count:
        during = snapshot(ckpt)
    changed = {k for k in before if not torch.equal(before[k], during[k])}
    assert count == len(lora.layers) == len(changed)
    assert all(k[1].endswith(".weight") for k in changed)  # biases and norms untouched
    after = snapshot(ckpt)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_delta_is_strength_times_alpha_over_rank_times_up_down(checkpoints, tmp_path):
    ckpt = checkpoints["tiny-sd15"]
    raw = load_file(make_lora("tiny-lora-sd15", tmp_path / "l.safetensors", seed=2, rank=4))
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    up, down, alpha = raw[prefix + ".lora_up.weight"], raw[prefix + ".lora_down.weight"], raw[prefix + ".alpha"]
    assert float(alpha) == 2.0
    module = ckpt.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    expected = module.weight.detach().clone() + 0.7 * (float(alpha) / 4) * (up @ down)
    bound, _ = bind_all(parse_lora(raw, "l"), ckpt, strength=0.7)
    with patched(roots_of(ckpt), [bound]):
        torch.testing.assert_close(module.weight, expected, rtol=0, atol=1e-6)
    # SD1.5's proj_in is a 1x1 convolution: kohya stores [r, in, 1, 1]
    assert raw["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].ndim == 4


def test_two_loras_on_one_weight_add_and_an_error_inside_still_restores(checkpoints, tmp_path):
    ckpt = checkpoints["tiny-sd15"]
    one = read_lora(make_lora("tiny-lora-sd15", tmp_path / "a.safetensors", seed=1))
    two = read_lora(make_lora("tiny-lora-sd15", tmp_path / "b.safetensors", seed=2))
    (a, _), (b, _) = bind_all(one, ckpt, 0.5), bind_all(two, ckpt, -1.5)
    module = ckpt.unet.get_submodule("mid_block.attentions.0.proj_out")
    base = module.weight.detach().clone()
    with patched(roots_of(ckpt), [a]):
        delta_a = module.weight - base
    with patched(roots_of(ckpt), [b]):
        delta_b = module.weight - base
    before = snapshot(ckpt)
    with pytest.raises(RuntimeError, match="boom"):
        with patched(roots_of(ckpt), [a, b]):
            torch.testing.assert_close(module.weight - base, delta_a + delta_b, rtol=0, atol=1e-6)
            raise RuntimeError("boom")
    after = snapshot(ckpt)
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_a_lora_for_the_other_base_is_refused_by_shape(checkpoints, tmp_path):
    lora = read_lora(make_lora("tiny-lora-sdxl", tmp_path / "x.safetensors"))
    with pytest.raises(LoraError, match="does not fit this checkpoint"):
        bind_all(lora, checkpoints["tiny-sd15"])


def test_files_farm_cannot_apply_are_refused_by_kind(tmp_path):
    with pytest.raises(LoraError, match="LoHa"):
        parse_lora({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, "loha.safetensors")
    with pytest.raises(LoraError, match="no LoRA layers"):
        parse_lora({"model.diffusion_model.x.weight": torch.zeros(2, 2)}, "full.safetensors")
    with pytest.raises(LoraError, match="no up matrix"):
        parse_lora({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, "half.safetensors")
    with pytest.raises(LoraError, match="only loads LoRAs saved as .safetensors"):
        read_lora(tmp_path / "old.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError, match="not a readable safetensors"):
        read_lora(tmp_path / "bad.safetensors")


def test_make_checkpoint_writes_loras_in_the_named_layout(tmp_path, capsys):
    assert main(["make-checkpoint", "tiny-lora-sdxl", str(tmp_path / "k.safetensors"), "--rank", "2"]) == 0
    assert main(["make-checkpoint", "tiny-lora-sdxl", str(tmp_path / "p.safetensors"), "--layout", "peft"]) == 0
    kohya, peft = load_file(tmp_path / "k.safetensors"), load_file(tmp_path / "p.safetensors")
    assert any(k.startswith("lora_unet_input_blocks_") for k in kohya)  # SDXL: sd-scripts' LDM names
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in kohya)
    assert all(v.shape[0] == 2 for k, v in kohya.items() if k.endswith("lora_down.weight"))
    assert any(k.startswith("text_encoder_2.") and k.endswith(".lora_B.weight") for k in peft)
    assert not any(k.endswith(".alpha") for k in peft)
    # a full-size file is float16 and sized for the real SD1.5 (768-wide text encoder)
    main(["make-checkpoint", "lora-sd15", str(tmp_path / "full.safetensors")])
    full = load_file(tmp_path / "full.safetensors")
    q = full["lora_te_text_model_encoder_layers_11_self_attn_q_proj.lora_down.weight"]
    assert q.dtype == torch.float16 and q.shape == (4, 768)
    assert math.isclose(float(full["lora_te_text_model_encoder_layers_11_self_attn_q_proj.alpha"]), 2.0)
