"""The oracle: farm's txt2img equals diffusers' own pipeline on the same weights, the same
initial noise and ComfyUI's sigma schedule.

How each reference is configured to follow ComfyUI's definitions (independently of farm's
code):
- euler / normal: ComfyUI's "normal" schedule is the trained sigmas at the timesteps
  linspace(999, 0, steps); with steps=10 those are whole numbers, so EulerDiscreteScheduler
  given `timesteps=` reproduces both the sigmas and the (integer) UNet timesteps.
  timestep_spacing="leading" makes its init_noise_sigma sqrt(sigma_max^2 + 1), which is
  ComfyUI's scaling of the initial noise at full denoise.
- dpmpp_2m / karras: DPMSolverMultistepScheduler (dpmsolver++, 2nd order, midpoint) with
  Karras sigmas between the table's sigma_min and sigma_max (timestep_spacing="linspace"
  makes those the ends), final sigma 0 (first-order last step, as k-diffusion), and timesteps
  rounded to the nearest trained step, which is what ComfyUI feeds the UNet. It works on
  x / sqrt(1 + sigma^2), so its initial latents are the unit noise itself.
- ddim / ddim_uniform: ComfyUI's ddim is Euler on the timesteps 1 + k*(1000 // steps),
  which DDIMScheduler(steps_offset=1, "leading", set_alpha_to_one=True) visits too. ComfyUI
  does not use the sqrt(1 + sigma^2) scaling when sigma_0 < sigma_max, so the reference's
  initial latents are noise * sigma_0 / sqrt(1 + sigma_0^2) (its VP-space equivalent).
"""
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from farm.engine.local import LocalRenderer
from farm.models.load import load_checkpoint
from farm.records.paths import FarmPaths

STEPS, SIZE, SEED, CFG = 10, 64, 1234, 7.0
POSITIVE, NEGATIVE = "a red fox in the snow, photograph", "blurry, watermark"
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# Tolerances. Measured (CPU, float32, 2026-11-25) over the six cases: relative L2 error of the
# final latents 1.9e-6 .. 2.7e-6, images within 0.0011 of one 8-bit level. Both paths run the
# same float32 UNet; what differs is the order of a few float32 operations (CFG, the sampler
# update written in VE vs VP form), i.e. rounding. The bounds keep a ~4x margin over that and
# are still tight enough to catch any one-step or one-sigma mistake (those give errors > 1e-2).
LATENT_RTOL, PIXEL_LEVELS = 1e-5, 0.01


def trained_sigmas() -> np.ndarray:
    betas = np.linspace(SD["beta_start"] ** 0.5, SD["beta_end"] ** 0.5, 1000, dtype=np.float64) ** 2
    acp = np.cumprod(1.0 - betas)
    return ((1 - acp) / acp) ** 0.5


def reference(case: str):
    """(scheduler, call kwargs, initial-latent scale) for diffusers, per ComfyUI's definition."""
    sigmas = trained_sigmas()
    if case == "euler":
        timesteps = np.linspace(999, 0, STEPS).round().astype(int).tolist()
        return EulerDiscreteScheduler(**SD, timestep_spacing="leading"), {"timesteps": timesteps}, 1.0
    if case == "dpmpp_2m":
        sched = DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=2,
                                            solver_type="midpoint", use_karras_sigmas=True,
                                            timestep_spacing="linspace", final_sigmas_type="zero")
        return sched, {"num_inference_steps": STEPS}, 1.0
    if case == "ddim":
        sigma0 = sigmas[1 + (STEPS - 1) * (1000 // STEPS)]
        sched = DDIMScheduler(**SD, steps_offset=1, timestep_spacing="leading", set_alpha_to_one=True,
                              clip_sample=False)
        return sched, {"num_inference_steps": STEPS}, sigma0 / math.sqrt(1 + sigma0**2)
    raise ValueError(case)


FARM_SAMPLER = {"euler": ("euler", "normal"), "dpmpp_2m": ("dpmpp_2m", "karras"), "ddim": ("ddim", "ddim_uniform")}


def farm_render(models_dir, output_dir, ckpt: str, case: str, lora: str | None = None):
    sampler, scheduler = FARM_SAMPLER[case]
    workflow = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"oracle_{case}"}},
    }
    if lora is not None:
        workflow["10"] = {"class_type": "LoraLoader", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": lora, "strength_model": LORA_STRENGTH,
            "strength_clip": LORA_STRENGTH}}
        workflow["6"]["inputs"]["clip"] = workflow["7"]["inputs"]["clip"] = ["10", 1]
        workflow["3"]["inputs"]["model"] = ["10", 0]
    renderer = LocalRenderer(FarmPaths(models_dir, output_dir, output_dir / "in", output_dir / "tmp"),
                             device=torch.device("cpu"))
    prepared = renderer.prepare(workflow)
    outcome = renderer.run(prepared)
    renderer.close()
    assert outcome.ok, outcome.error
    (latent,) = renderer.engine.cache.get(prepared.plan.signatures["3"])
    (image,) = renderer.engine.cache.get(prepared.plan.signatures["8"])
    return latent.samples, image


def diffusers_render(path, arch: str, case: str, lora_path=None):
    ckpt = load_checkpoint(path, torch.device("cpu"), torch.float32)
    scheduler, kwargs, init_scale = reference(case)
    if arch == "sd15":
        pipe = StableDiffusionPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0],
                                       unet=ckpt.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0],
                                         text_encoder_2=ckpt.text_encoders[1], tokenizer=ckpt.tokenizers[0],
                                         tokenizer_2=ckpt.tokenizers[1], unet=ckpt.unet, scheduler=scheduler,
                                         add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    if lora_path is not None:  # diffusers' own reader of kohya and PEFT files (through peft)
        pipe.load_lora_weights(str(lora_path), adapter_name="oracle")
        pipe.set_adapters(["oracle"], adapter_weights=[LORA_STRENGTH])
    shape = (1, 4, SIZE // 8, SIZE // 8)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(SEED))  # ComfyUI's prepare_noise
    out = pipe(prompt=POSITIVE, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, guidance_scale=CFG,
               latents=noise * init_scale, output_type="latent", **kwargs).images
    latents = out / ckpt.vae.config.scaling_factor
    with torch.no_grad():
        pixels = (ckpt.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return latents, pixels


@pytest.mark.parametrize("case", ["euler", "dpmpp_2m", "ddim"])
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_farm_equals_diffusers_pipeline(tiny_models, tmp_path, arch, case):
    ckpt = f"tiny-{arch}.safetensors"
    farm_latent, farm_image = farm_render(tiny_models, tmp_path, ckpt, case)
    ref_latent, ref_image = diffusers_render(tiny_models / "checkpoints" / ckpt, arch, case)
    assert farm_latent.shape == ref_latent.shape
    assert farm_latent.abs().max() > 0.1  # a degenerate all-zero result would match trivially
    latent_err = ((farm_latent - ref_latent).norm() / ref_latent.norm()).item()
    assert latent_err < LATENT_RTOL, f"{arch}/{case}: latent relative L2 error {latent_err:.2e}"
    level_err = (farm_image * 255 - ref_image * 255).abs().max().item()
    assert level_err <= PIXEL_LEVELS, f"{arch}/{case}: image differs by {level_err:.2f} levels"


# LoRA: diffusers keeps the LoRA beside each layer (base(x) + s * B(A(x)), through peft);
# farm adds s * up @ down into the weight. Measured (CPU, float32, euler, strength 0.8) over
# the four cases: relative L2 error of the final latents 2.0e-6 .. 3.1e-6, images within
# 0.0013 of one 8-bit level -- the same rounding as the base cases, so the same bounds
# hold. The LoRA itself moves the latents by 38% .. 65%: a missed layer or a forgotten
# alpha/rank scale could not pass.
LORA_STRENGTH = 0.8


@pytest.mark.parametrize("layout", ["kohya", "peft"])
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_farm_lora_equals_diffusers_load_lora_weights(tiny_loras, tmp_path, arch, layout):
    ckpt, lora = f"tiny-{arch}.safetensors", f"tiny-{arch}-{layout}.safetensors"
    farm_latent, farm_image = farm_render(tiny_loras, tmp_path, ckpt, "euler", lora=lora)
    base_latent, _ = farm_render(tiny_loras, tmp_path, ckpt, "euler")
    ref_latent, ref_image = diffusers_render(tiny_loras / "checkpoints" / ckpt, arch, "euler",
                                             lora_path=tiny_loras / "loras" / lora)
    lora_effect = ((farm_latent - base_latent).norm() / base_latent.norm()).item()
    latent_err = ((farm_latent - ref_latent).norm() / ref_latent.norm()).item()
    level_err = (farm_image * 255 - ref_image * 255).abs().max().item()
    print(f"lora oracle {arch}/{layout}: latent rel L2 {latent_err:.2e}, image {level_err:.4f} levels, "
          f"LoRA effect {lora_effect:.2e}")
    assert lora_effect > 1e-2  # the LoRA did something, so agreeing with diffusers means something
    assert latent_err < LATENT_RTOL, f"{arch}/{layout}: latent relative L2 error {latent_err:.2e}"
    assert level_err <= PIXEL_LEVELS, f"{arch}/{layout}: image differs by {level_err:.2f} levels"
