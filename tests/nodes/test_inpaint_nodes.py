"""Noise masks in KSampler on a tiny checkpoint: the kept region comes back as it went in,
the masked region is repainted, an all-ones mask is plain sampling, and a masked job
batched with an unmasked one gives what each gives alone."""
import numpy as np
import pytest
import torch
from PIL import Image

from farm.engine import JobContext, PlannedJob
from farm.engine.local import LocalRenderer
from farm.records.paths import FarmPaths


@pytest.fixture(scope="module")
def renderer(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("inpaint")
    (out / "input").mkdir()
    rgba = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[:, :32, 3] = 255  # left half opaque (kept), right half transparent (repainted)
    rgba[:, 32:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(out / "input" / "photo.png")
    Image.fromarray(np.full((64, 64, 4), 255, np.uint8), "RGBA").save(out / "input" / "opaque.png")
    r = LocalRenderer(FarmPaths(tiny_models, out / "output", out / "input", out / "temp"), device=torch.device("cpu"))
    yield r
    r.close()


def workflow(image="photo.png", masked=True, seed=1, mode="noise_mask"):
    nodes = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.8,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["2", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    if masked and mode == "noise_mask":
        nodes["10"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["2", 0], "mask": ["1", 1]}}
        nodes["3"]["inputs"]["latent_image"] = ["10", 0]
    elif masked:
        nodes["10"] = {"class_type": "VAEEncodeForInpaint",
                       "inputs": {"pixels": ["1", 0], "vae": ["4", 2], "mask": ["1", 1], "grow_mask_by": 6}}
        nodes["3"]["inputs"]["latent_image"] = ["10", 0]
    return nodes


def outputs(renderer, wf):
    prepared = renderer.prepare(wf)
    outcome = renderer.run(prepared)
    assert outcome.ok, outcome.error
    get = renderer.engine.cache.get
    source = get(prepared.plan.signatures["10" if "10" in wf else "2"])[0]
    return source, get(prepared.plan.signatures["3"])[0]


def test_the_kept_half_comes_back_and_the_masked_half_is_repainted(renderer):
    source, out = outputs(renderer, workflow())
    assert out.noise_mask is source.noise_mask  # carried on, as ComfyUI's LATENT dict is
    left, right = slice(0, 4), slice(4, 8)  # latent columns of the opaque / transparent halves
    x, y = source.samples, out.samples
    torch.testing.assert_close(y[..., left], x[..., left], rtol=1e-4, atol=1e-4)
    assert (y[..., right] - x[..., right]).abs().mean() > 0.1
    _, unmasked = outputs(renderer, workflow(masked=False))
    assert (unmasked.samples[..., left] - x[..., left]).abs().mean() > 0.1


def test_an_all_ones_mask_is_plain_sampling_exactly(renderer):
    # opaque.png's mask is all 0 (nothing transparent): invert it through a 1-alpha image
    _, plain = outputs(renderer, workflow("opaque.png", masked=False))
    wf = workflow("opaque.png")
    wf["11"] = {"class_type": "LoadImageMask", "inputs": {"image": "opaque.png", "channel": "red"}}  # all 1
    wf["10"]["inputs"]["mask"] = ["11", 0]
    _, masked = outputs(renderer, wf)
    assert torch.equal(masked.samples, plain.samples)


def test_a_masked_and_an_unmasked_job_batch_as_they_run_alone(renderer):
    wfs = [workflow(seed=4), workflow(masked=False, seed=5)]
    alone = [outputs(renderer, wf)[1].samples for wf in wfs]
    renderer.engine.cache.clear()
    prepared = [renderer.prepare(wf) for wf in wfs]
    jobs = [PlannedJob(JobContext(p.prompt_id, p.prompt), p.plan) for p in prepared]
    assert all(o.ok for o in renderer.engine.run_batch(jobs))
    for p, expected in zip(prepared, alone):
        got = renderer.engine.cache.get(p.plan.signatures["3"])[0].samples
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_vae_encode_for_inpaint_grows_the_mask_and_keeps_the_rest(renderer):
    source, out = outputs(renderer, workflow(mode="for_inpaint"))
    mask = source.noise_mask
    assert mask.shape == (1, 1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    # a 6x6 box with padding 3 (ComfyUI's) grows the hole by 2 px to the left
    assert mask[0, 0, :, 30].eq(1).all() and mask[0, 0, :, 29].eq(0).all()
    torch.testing.assert_close(out.samples[..., :3], source.samples[..., :3], rtol=1e-4, atol=1e-4)
