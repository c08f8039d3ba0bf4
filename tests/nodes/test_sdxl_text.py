"""CLIPTextEncodeSDXL against diffusers' StableDiffusionXLPipeline on the tiny SDXL
checkpoint: text_l goes to CLIP-L (diffusers' prompt), text_g to OpenCLIP bigG (prompt_2),
and width/height, crop_w/crop_h, target_width/target_height reach the UNet's added time ids
as original_size, crops_coords_top_left and target_size do. Euler on ComfyUI's normal
schedule, set up as tests/engine/test_oracle.py explains."""
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from farm.models.load import load_checkpoint
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.workflow.prepare import ValidationFailed
from node_rendering import cpu_renderer, sampled

STEPS, SIZE, SEED, CFG = 10, 64, 99, 6.0
TEXT_L, TEXT_G, NEGATIVE = "a lighthouse at dusk", "oil painting, thick brush strokes", "blurry"
ORIGINAL, CROP, TARGET = (512, 768), (16, 32), (896, 1024)  # (height, width), (top, left), (height, width)
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# Measured (CPU, float32): relative L2 error of the final latents 1.6e-06, the same float32
# rounding as the oracle's cases; its bound (1e-5) applies. The size conditioning itself moves
# the latents by 9.9e-02 (relative L2), so ids that did not reach the UNet could not pass.
LATENT_RTOL = 1e-5


@pytest.fixture(scope="module")
def renderer(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl_text")
    r = cpu_renderer(tiny_models, out)
    yield r
    r.close()


def sdxl_encode(text_g, text_l, sizes=True):
    inputs = {"clip": ["4", 1], "text_g": text_g, "text_l": text_l, "width": ORIGINAL[1], "height": ORIGINAL[0],
              "crop_w": CROP[1], "crop_h": CROP[0], "target_width": TARGET[1], "target_height": TARGET[0]}
    if not sizes:  # the latent's own size, crop 0: what a plain CLIPTextEncode gets
        inputs.update(width=SIZE, height=SIZE, crop_w=0, crop_h=0, target_width=SIZE, target_height=SIZE)
    return {"class_type": "CLIPTextEncodeSDXL", "inputs": inputs}


def workflow(positive, negative, ckpt="tiny-sdxl.safetensors"):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": positive, "7": negative,
        "3": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def diffusers_latents(path):
    ckpt = load_checkpoint(path, torch.device("cpu"), torch.float32)
    timesteps = np.linspace(999, 0, STEPS).round().astype(int).tolist()
    pipe = StableDiffusionXLPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0],
                                     text_encoder_2=ckpt.text_encoders[1], tokenizer=ckpt.tokenizers[0],
                                     tokenizer_2=ckpt.tokenizers[1], unet=ckpt.unet,
                                     scheduler=EulerDiscreteScheduler(**SD, timestep_spacing="leading"),
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    out = pipe(prompt=TEXT_L, prompt_2=TEXT_G, negative_prompt=NEGATIVE, negative_prompt_2=NEGATIVE,
               height=SIZE, width=SIZE, guidance_scale=CFG, latents=noise, timesteps=timesteps,
               original_size=ORIGINAL, crops_coords_top_left=CROP, target_size=TARGET,
               output_type="latent").images
    return out / ckpt.vae.config.scaling_factor


def test_size_conditioning_equals_diffusers_original_crop_and_target_size(renderer, tiny_models):
    farm = sampled(renderer, workflow(sdxl_encode(TEXT_G, TEXT_L), sdxl_encode(NEGATIVE, NEGATIVE)))
    ref = diffusers_latents(tiny_models / "checkpoints" / "tiny-sdxl.safetensors")
    err = ((farm - ref).norm() / ref.norm()).item()
    unsized = sampled(renderer, workflow(sdxl_encode(TEXT_G, TEXT_L, sizes=False),
                                         sdxl_encode(NEGATIVE, NEGATIVE, sizes=False)))
    effect = ((farm - unsized).norm() / unsized.norm()).item()
    print(f"CLIPTextEncodeSDXL vs diffusers: latent rel L2 {err:.2e}; size conditioning effect {effect:.2e}")
    assert effect > 1e-2
    assert err < LATENT_RTOL


def test_latent_sized_ids_equal_a_plain_prompt_and_the_texts_go_to_their_encoders(renderer):
    plain = {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT_L, "clip": ["4", 1]}}
    negative = {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}}
    reference = sampled(renderer, workflow(plain, negative))
    same = sampled(renderer, workflow(sdxl_encode(TEXT_L, TEXT_L, sizes=False), sdxl_encode(NEGATIVE, NEGATIVE,
                                                                                              sizes=False)))
    assert torch.equal(same, reference)
    swapped = sampled(renderer, workflow(sdxl_encode(TEXT_L, TEXT_G, sizes=False), sdxl_encode(NEGATIVE, NEGATIVE,
                                                                                                sizes=False)))
    assert (swapped - reference).abs().max() > 1e-3


def test_a_long_text_g_pads_text_l_with_empty_chunks(renderer):
    long_g = ", ".join(["a very long description of a harbour"] * 20)  # several 77-token chunks
    latent = sampled(renderer, workflow(sdxl_encode(long_g, "boat"), sdxl_encode(NEGATIVE, NEGATIVE)))
    assert torch.isfinite(latent).all()


def test_the_refiner_node_gives_its_width_and_height_to_sdxl(renderer):
    refiner = {"class_type": "CLIPTextEncodeSDXLRefiner",
               "inputs": {"ascore": 6.0, "width": ORIGINAL[1], "height": ORIGINAL[0], "text": TEXT_L,
                          "clip": ["4", 1]}}
    negative = {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}}
    sized = sdxl_encode(TEXT_L, TEXT_L)
    sized["inputs"].update(crop_w=0, crop_h=0, target_width=ORIGINAL[1], target_height=ORIGINAL[0])
    # on the base model the refiner node's width/height are the original and the target size
    assert torch.equal(sampled(renderer, workflow(refiner, negative)), sampled(renderer, workflow(sized, negative)))


def test_an_sd15_clip_is_refused_with_the_reason(renderer):
    prepared = renderer.prepare(workflow(sdxl_encode("a", "b"), sdxl_encode("c", "d"), ckpt="tiny-sd15.safetensors"))
    outcome = renderer.run(prepared)
    assert outcome.error is not None and "needs SDXL's CLIP" in str(outcome.error)


def test_object_info_has_comfyuis_inputs(tmp_path):
    info = default_registry().object_info(NodeContext.under(tmp_path))
    sdxl = info["CLIPTextEncodeSDXL"]
    assert sdxl["input_order"]["required"] == ["clip", "width", "height", "crop_w", "crop_h", "target_width",
                                               "target_height", "text_g", "text_l"]
    assert sdxl["input"]["required"]["width"] == ["INT", {"default": 1024, "min": 0, "max": 16384}]
    assert sdxl["input"]["required"]["text_g"] == ["STRING", {"multiline": True}]
    refiner = info["CLIPTextEncodeSDXLRefiner"]
    assert refiner["input_order"]["required"] == ["ascore", "width", "height", "text", "clip"]
    assert refiner["input"]["required"]["ascore"] == ["FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0,
                                                               "step": 0.01}]
    assert sdxl["category"] == refiner["category"] == "advanced/conditioning"


def test_a_negative_width_is_refused_at_validation(renderer):
    with pytest.raises(ValidationFailed):  # a bad width is caught by the declared minimum
        renderer.prepare(workflow({**sdxl_encode("a", "b"), "inputs": {**sdxl_encode("a", "b")["inputs"],
                                                                        "width": -1}}, sdxl_encode("c", "d")))
