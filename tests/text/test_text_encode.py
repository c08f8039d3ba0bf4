"""CLIPTextEncode / CLIPSetLastLayer on tiny random CLIP text models.

References: diffusers' own encode_prompt for plain prompts, and direct forwards of the HF
models (hidden_states, final_layer_norm, text_embeds) worked through by hand for weights,
long prompts and layer selection.
"""
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from torch.testing import assert_close
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from farm.text import ClipArch, ClipTextEncoder, clip_g_tokenizer, clip_l_tokenizer

S, E = 49406, 49407
CAT, DOG = 2368, 1929
PROMPT = "a photo of a cat, highly detailed"


def tiny_config(**extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, **extra)


@pytest.fixture(scope="module")
def clip_l():
    torch.manual_seed(1)
    return CLIPTextModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def clip_g():
    torch.manual_seed(2)
    return CLIPTextModelWithProjection(tiny_config(projection_dim=32, hidden_act="gelu")).eval()


@pytest.fixture(scope="module")
def sd1(clip_l):
    return ClipTextEncoder.sd1(clip_l)


@pytest.fixture(scope="module")
def sdxl(clip_l, clip_g):
    return ClipTextEncoder.sdxl(clip_l, clip_g)


def ids(body, pad):
    row = [S] + list(body) + [E]
    return torch.tensor([row + [pad] * (77 - len(row))])


def final_layer_norm(model):
    return getattr(model, "text_model", model).final_layer_norm  # transformers 5 has no .text_model


@torch.no_grad()
def run(model, token_ids):
    return model(token_ids, output_hidden_states=True)


# --- equality with diffusers for plain prompts -------------------------------------------

@pytest.mark.parametrize("prompt", [PROMPT, "", "cat " * 75])
def test_sd1_equals_diffusers_encode_prompt(clip_l, sd1, prompt):
    pipe = StableDiffusionPipeline(vae=None, text_encoder=clip_l, tokenizer=clip_l_tokenizer(), unet=None,
                                   scheduler=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)
    cond = sd1.encode(prompt)
    assert cond.embeds.shape == (1, 77, 32)
    assert torch.equal(cond.embeds, expected)
    assert cond.pooled is None and cond.time_ids is None


@pytest.mark.parametrize("prompt", [PROMPT, "", "cat " * 75])
def test_sdxl_equals_diffusers_encode_prompt(clip_l, clip_g, sdxl, prompt):
    pipe = StableDiffusionXLPipeline(vae=None, text_encoder=clip_l, text_encoder_2=clip_g,
                                     tokenizer=clip_l_tokenizer(), tokenizer_2=clip_g_tokenizer(),
                                     unet=None, scheduler=None, add_watermarker=False)
    with torch.no_grad():
        expected, _, expected_pooled, _ = pipe.encode_prompt(prompt, device=torch.device("cpu"),
                                                             do_classifier_free_guidance=False)
    cond = sdxl.encode(prompt)
    assert cond.embeds.shape == (1, 77, 64) and cond.pooled.shape == (1, 32)
    assert torch.equal(cond.embeds, expected)
    assert torch.equal(cond.pooled, expected_pooled)


# --- emphasis weights ---------------------------------------------------------------------

def test_sd1_weights_interpolate_from_the_empty_prompt(clip_l, sd1):
    w_cat, w_dog = 1.5, 0.5
    got = sd1.encode(f"a ({'cat'}:{w_cat}) ({'dog'}:{w_dog})").embeds[0]
    z = run(clip_l, ids([320, CAT, DOG], E)).last_hidden_state[0]
    z0 = run(clip_l, ids([], E)).last_hidden_state[0]  # the empty prompt: start, end, pad...
    expected = z.clone()
    expected[2] = z0[2] + w_cat * (z[2] - z0[2])
    expected[3] = z0[3] + w_dog * (z[3] - z0[3])
    assert_close(got, expected)
    assert not torch.allclose(got[2], z[2])  # the weight did something
    # tokens of weight 1 are exactly the unweighted encoding of the same tokens
    plain = sd1.encode("a cat dog").embeds[0]
    keep = [0, 1] + list(range(4, 77))
    assert torch.equal(got[keep], plain[keep])


def test_sdxl_weights_use_each_encoders_own_empty_prompt(clip_l, clip_g, sdxl):
    cond = sdxl.encode("a (cat:1.4)")
    z_l = run(clip_l, ids([320, CAT], E)).hidden_states[-2][0]
    z0_l = run(clip_l, ids([], E)).hidden_states[-2][0]
    z_g = run(clip_g, ids([320, CAT], 0)).hidden_states[-2][0]
    z0_g = run(clip_g, ids([], 0)).hidden_states[-2][0]  # clip_g's empty prompt pads with 0
    for z, z0 in ((z_l, z0_l), (z_g, z0_g)):
        z[2] = z0[2] + 1.4 * (z[2] - z0[2])
    assert_close(cond.embeds[0], torch.cat([z_l, z_g], dim=-1))
    # pooled output ignores weights: it is the plain prompt's
    assert_close(cond.pooled, run(clip_g, ids([320, CAT], 0)).text_embeds)


# --- long prompts -------------------------------------------------------------------------

def test_sd1_long_prompt_is_two_chunks(clip_l, sd1):
    got = sd1.encode("cat " * 80).embeds
    assert got.shape == (1, 154, 32)
    first = run(clip_l, ids([CAT] * 75, E)).last_hidden_state[0]
    second = run(clip_l, ids([CAT] * 5, E)).last_hidden_state[0]
    assert_close(got[0], torch.cat([first, second]))


def test_sdxl_long_prompt_pooled_comes_from_the_first_chunk(clip_l, clip_g, sdxl):
    cond = sdxl.encode("cat " * 80 + "(dog:1.2)")
    assert cond.embeds.shape == (1, 154, 64)
    first_g = run(clip_g, ids([CAT] * 75, 0))
    second_g = run(clip_g, ids([CAT] * 5 + [DOG], 0))
    assert_close(cond.pooled, first_g.text_embeds)
    assert not torch.allclose(cond.pooled, second_g.text_embeds)
    assert_close(cond.embeds[0, :77, 32:], first_g.hidden_states[-2][0])
    assert_close(cond.embeds[0, :77, :32], run(clip_l, ids([CAT] * 75, E)).hidden_states[-2][0])


# --- CLIPSetLastLayer ---------------------------------------------------------------------

def test_sd1_set_last_layer_minus_2_applies_the_final_layer_norm(clip_l, sd1):
    out = run(clip_l, ids([320, 1125, 539, 320, CAT], E))
    got = sd1.with_last_layer(-2).encode("a photo of a cat").embeds[0]
    assert_close(got, final_layer_norm(clip_l)(out.hidden_states[-2])[0])
    assert not torch.allclose(got, out.last_hidden_state[0])
    # -1 is the default: the normed last layer
    assert_close(sd1.with_last_layer(-1).encode("a photo of a cat").embeds[0], out.last_hidden_state[0])


def test_sdxl_set_last_layer_moves_both_encoders_without_layer_norm(clip_l, clip_g, sdxl):
    got = sdxl.with_last_layer(-1).encode("a cat").embeds[0]
    out_l, out_g = run(clip_l, ids([320, CAT], E)), run(clip_g, ids([320, CAT], 0))
    assert_close(got, torch.cat([out_l.hidden_states[-1][0], out_g.hidden_states[-1][0]], dim=-1))
    assert not torch.allclose(got[:, :32], out_l.last_hidden_state[0])


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_layer_deeper_than_the_model_falls_back_to_the_normed_last_layer(clip_l, clip_g, sd1, sdxl, arch):
    enc = sd1 if arch == "sd1" else sdxl
    got = enc.with_last_layer(-3).encode("a cat").embeds[0]  # the tiny models have 2 layers
    expected = run(clip_l, ids([320, CAT], E)).last_hidden_state[0]
    if arch == "sdxl":
        expected = torch.cat([expected, run(clip_g, ids([320, CAT], 0)).last_hidden_state[0]], dim=-1)
    assert_close(got, expected)


def test_with_last_layer_copies(sd1):
    copy = sd1.with_last_layer(-2)
    assert copy.layer == -2 and sd1.layer is None and copy.text_model is sd1.text_model
    with pytest.raises(ValueError, match="negative"):
        sd1.with_last_layer(0)


# --- the value itself ---------------------------------------------------------------------

def test_output_keeps_the_model_dtype():
    torch.manual_seed(3)
    model = CLIPTextModel(tiny_config()).eval().to(torch.bfloat16)
    cond = ClipTextEncoder.sd1(model).encode("a (cat:1.2)")
    assert cond.embeds.dtype == torch.bfloat16 and cond.embeds.device.type == "cpu"
    assert not cond.embeds.requires_grad


def test_arch_must_match_the_models(clip_l, clip_g):
    assert ClipTextEncoder("sd1", clip_l_tokenizer(), clip_l).arch is ClipArch.SD1
    with pytest.raises(ValueError, match="needs tokenizer_g"):
        ClipTextEncoder(ClipArch.SDXL, clip_l_tokenizer(), clip_l)
    with pytest.raises(ValueError, match="single CLIP model"):
        ClipTextEncoder(ClipArch.SD1, clip_l_tokenizer(), clip_l, clip_g_tokenizer(), clip_g)
    with pytest.raises(ValueError):
        ClipTextEncoder("sd3", clip_l_tokenizer(), clip_l)
