"""ControlNet nodes in the engine on tiny checkpoints: every file layout gives the same
result, the window and strength act as ComfyUI's, the legacy node controls the negative
too, batched jobs equal the jobs run alone, and the cache key follows the image's bytes and
the ControlNet file."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from farm.nodes.controlnet import CONTROLNETS
from farm.nodes.registry import default_registry
from farm.nodes.spec import Limits, NodeContext
from farm.workflow.prepare import ValidationFailed
from node_rendering import batched_and_alone, cpu_renderer, sampled, spy_on_sampler_calls

LDM = "tiny-cn-sd15.safetensors"


def workflow(controlnet=LDM, strength=1.0, start=0.0, end=1.0, seed=1, prompt="a lighthouse", legacy=False,
             image="control.png", ckpt="tiny-sd15.safetensors"):
    nodes = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "cn"}},
    }
    if controlnet is None:
        return nodes
    nodes["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
    nodes["11"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    if legacy:
        nodes["12"] = {"class_type": "ControlNetApply", "inputs": {
            "conditioning": ["6", 0], "control_net": ["10", 0], "image": ["11", 0], "strength": strength}}
        nodes["3"]["inputs"]["positive"] = ["12", 0]
    else:
        nodes["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["10", 0], "image": ["11", 0],
            "strength": strength, "start_percent": start, "end_percent": end}}
        nodes["3"]["inputs"]["positive"], nodes["3"]["inputs"]["negative"] = ["12", 0], ["12", 1]
    return nodes


@pytest.fixture(scope="module")
def renderer(tiny_controlnets, tmp_path_factory):
    out = tmp_path_factory.mktemp("cn-out")
    (out / "input").mkdir()
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(out / "input" / "control.png")
    Image.fromarray(255 - rgb, "RGB").save(out / "input" / "other.png")
    r = cpu_renderer(tiny_controlnets, out)
    yield r
    r.close()


def test_every_file_layout_gives_the_same_render_and_the_controlnet_acts(renderer):
    base = sampled(renderer, workflow(None))
    controlled = sampled(renderer, workflow())
    assert ((controlled - base).norm() / base.norm()) > 1e-2
    for name in ("tiny-cn-sd15-diffusers/diffusion_pytorch_model.safetensors", "tiny-cn-sd15-diffkeys.safetensors"):
        assert torch.equal(sampled(renderer, workflow(name)), controlled), name
    other = sampled(renderer, workflow(image="other.png"))
    assert (other - controlled).abs().max() > 1e-2  # the image matters, not only that there is one


def test_strength_and_the_window_of_percents(renderer):
    base = sampled(renderer, workflow(None))
    full = sampled(renderer, workflow())
    assert torch.equal(sampled(renderer, workflow(strength=0.0)), base)  # strength 0 returns the inputs
    # a window that closes before the first step (end 0) or opens after the last (start 1) never acts
    assert torch.equal(sampled(renderer, workflow(end=0.0)), base)
    assert torch.equal(sampled(renderer, workflow(start=1.0)), base)
    # 2 euler / normal steps run at sigma 14.6 and 0.029; percent 0.4 is sigma 2.28 and 0.6 is
    # 1.16 (ComfyUI's percent_to_sigma), so [0, 0.4] covers the first step only, [0.6, 1] the second
    first_only = sampled(renderer, workflow(end=0.4))
    second_only = sampled(renderer, workflow(start=0.6))
    for partial in (first_only, second_only):
        assert (partial - base).abs().max() > 1e-3 and (partial - full).abs().max() > 1e-3
    assert (sampled(renderer, workflow(strength=0.5)) - full).abs().max() > 1e-3


def test_the_legacy_node_controls_the_negative_as_well(renderer):
    # ComfyUI's ControlNetApply sets control_apply_to_uncond: a negative without a ControlNet
    # gets the positive's, which is exactly ControlNetApplyAdvanced on both sides
    legacy = sampled(renderer, workflow(legacy=True, strength=0.7))
    assert torch.equal(legacy, sampled(renderer, workflow(strength=0.7)))


def test_two_controlnets_in_a_chain_add_up(renderer):
    chained = workflow()
    chained["13"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["12", 0], "negative": ["12", 1], "control_net": ["10", 0], "image": ["11", 0],
        "strength": 0.5, "start_percent": 0.0, "end_percent": 1.0}}
    chained["3"]["inputs"]["positive"], chained["3"]["inputs"]["negative"] = ["13", 0], ["13", 1]
    # the same network and image at 1.0 then 0.5 is its residuals at 1.5 (to float rounding)
    got, expected = sampled(renderer, chained), sampled(renderer, workflow(strength=1.5))
    assert ((got - expected).norm() / expected.norm()) < 1e-5


def test_batched_jobs_with_and_without_a_controlnet_equal_the_jobs_alone(renderer):
    wfs = [workflow(seed=2), workflow(seed=3, strength=0.5, prompt="a castle"), workflow(seed=4, strength=0.0)]
    for got, expected in batched_and_alone(renderer, wfs):
        # measured 3e-6: the ControlNet and UNet run on more rows at once, so float32 sums in
        # another order (a residual on the wrong job's rows would be > 1e-2)
        assert ((got - expected).norm() / expected.norm()) < 1e-5


def test_jobs_with_a_controlnet_and_different_steps_batch_as_they_run_alone(renderer, monkeypatch):
    # hints tie rows to their place in the batch, so finished rows stay in the UNet call (at
    # sigma 0) instead of leaving it; their latents must still be what each job gets alone
    calls = spy_on_sampler_calls(monkeypatch)
    wfs = [workflow(seed=5), workflow(seed=6, prompt="a castle")]
    wfs[1]["3"]["inputs"]["steps"] = 4
    for got, expected in batched_and_alone(renderer, wfs):
        assert ((got - expected).norm() / expected.norm()) < 1e-5
    assert calls[-1] == (2, 2)  # one sampler run of both jobs, one schedule per row


def test_a_controlnet_for_the_other_family_fails_its_sampler_with_the_reason(renderer):
    prepared = renderer.prepare(workflow("tiny-cn-sdxl.safetensors"))
    outcome = renderer.run(prepared)
    assert outcome.error is not None and outcome.error.node_id == "3"
    assert "is for sdxl models" in str(outcome.error)


def test_sdxl_controlnet_on_sdxl(renderer):
    base = sampled(renderer, workflow(None, ckpt="tiny-sdxl.safetensors"))
    controlled = sampled(renderer, workflow("tiny-cn-sdxl.safetensors", ckpt="tiny-sdxl.safetensors"))
    assert ((controlled - base).norm() / base.norm()) > 1e-2


def test_the_cache_key_follows_the_image_bytes_and_the_controlnet_file(renderer, tiny_controlnets):
    image = renderer.paths.input / "control.png"
    original = image.read_bytes()
    signature = renderer.prepare(workflow()).plan.signatures["12"]
    assert renderer.prepare(workflow()).plan.signatures["12"] == signature
    try:
        rgb = np.random.default_rng(9).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(rgb, "RGB").save(image)  # same name, new content
        assert renderer.prepare(workflow()).plan.signatures["12"] != signature
    finally:
        image.write_bytes(original)
    assert renderer.prepare(workflow()).plan.signatures["12"] == signature
    net = tiny_controlnets / "controlnet" / LDM
    stat = net.stat()
    os.utime(net, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file replaced
    try:
        assert renderer.prepare(workflow()).plan.signatures["12"] != signature
    finally:
        os.utime(net, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_plan_lists_the_controlnet_file(renderer):
    plan = renderer.prepare(workflow()).plan
    assert plan.checkpoints == ("tiny-sd15.safetensors",)
    assert plan.model_files == (("controlnet", LDM),)
    assert type(plan).from_json(plan.to_json()).model_files == plan.model_files  # kept by the durable queue


def test_a_loaded_controlnet_is_reused(renderer):
    sampled(renderer, workflow(seed=11))
    loads = CONTROLNETS.loads
    renderer.engine.cache.clear()  # the loader node runs again; the network is not read again
    sampled(renderer, workflow(seed=11))
    assert CONTROLNETS.loads == loads


def test_unknown_and_pickle_controlnet_names_are_refused_at_validation(renderer, tiny_controlnets):
    with pytest.raises(ValidationFailed, match="value_not_in_list|not in"):
        renderer.prepare(workflow("missing.safetensors"))
    (tiny_controlnets / "controlnet" / "old.pth").write_bytes(b"\x80")
    try:
        with pytest.raises(ValidationFailed, match="pickle file"):
            renderer.prepare(workflow("old.pth"))
    finally:
        (tiny_controlnets / "controlnet" / "old.pth").unlink()


def test_object_info_shapes(tmp_path):
    (tmp_path / "models" / "controlnet" / "sd15").mkdir(parents=True)
    (tmp_path / "models" / "controlnet" / "sd15" / "canny.safetensors").write_bytes(b"")
    ctx = NodeContext.under(tmp_path, Limits())
    info = default_registry().object_info(ctx)
    loader = info["ControlNetLoader"]
    assert loader["input"]["required"]["control_net_name"][0] == ["sd15/canny.safetensors"]
    assert (loader["output"], loader["category"], loader["display_name"]) == (["CONTROL_NET"], "loaders",
                                                                             "Load ControlNet Model")
    advanced = info["ControlNetApplyAdvanced"]
    assert advanced["input"]["required"]["control_net"] == ["CONTROL_NET"]
    assert advanced["input"]["required"]["strength"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0,
                                                                   "step": 0.01}]
    assert advanced["input"]["required"]["end_percent"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0,
                                                                      "step": 0.001}]
    assert advanced["input"]["optional"] == {"vae": ["VAE"]}
    assert advanced["input_order"]["required"] == ["positive", "negative", "control_net", "image", "strength",
                                                   "start_percent", "end_percent"]
    assert (advanced["output"], advanced["output_name"]) == (["CONDITIONING", "CONDITIONING"],
                                                             ["positive", "negative"])
    legacy = info["ControlNetApply"]
    assert legacy["input_order"]["required"] == ["conditioning", "control_net", "image", "strength"]
    assert legacy["output"] == ["CONDITIONING"]
    assert info["Canny"]["input"]["required"]["low_threshold"] == ["FLOAT", {"default": 0.4, "min": 0.01,
                                                                              "max": 0.99, "step": 0.01}]
