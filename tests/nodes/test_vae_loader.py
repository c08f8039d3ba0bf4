"""VAELoader: standalone VAE files in both key layouts load to the very weights of the VAE
they were cut from, decode as the checkpoint's own VAE does, and are known to the plan
(files a worker must have) and to the cache key (a replaced file is not served stale)."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from farm.engine.local import LocalRenderer
from farm.errors import UnsafeCheckpointError, UnsupportedCheckpointError
from farm.models.load import load_checkpoint
from farm.models.make_vae import make_vae
from farm.models.vae_file import load_vae_file
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.records.paths import FarmPaths
from farm.workflow.plan import Plan
from farm.workflow.prepare import ValidationFailed

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vae_models(tiny_models):
    folder = tiny_models / "vae"
    make_vae("tiny-sd15", folder / "tiny-ldm.safetensors", seed=7, layout="ldm")
    make_vae("tiny-sd15", folder / "tiny-diffusers.safetensors", seed=7, layout="diffusers")
    make_vae("tiny-sd15", folder / "other.safetensors", seed=8, layout="ldm")
    # the LDM layout still under a checkpoint's prefix, as some extracted VAEs are
    src = folder / "tiny-ldm.safetensors"
    with safe_open(str(src), "pt") as f:
        tensors = {"first_stage_model." + k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    save_file(tensors, str(folder / "tiny-prefixed.safetensors"), metadata)
    # diffusers' pre-0.14 attention names
    with safe_open(str(folder / "tiny-diffusers.safetensors"), "pt") as f:
        old = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
               .replace(".to_out.0.", ".proj_attn."): f.get_tensor(k) for k in f.keys()}
    save_file(old, str(folder / "tiny-old-diffusers.safetensors"), metadata)
    return tiny_models


@pytest.fixture(scope="module")
def renderer(vae_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    r = LocalRenderer(FarmPaths(vae_models, out / "output", out / "input", out / "temp"), device=CPU)
    yield r
    r.close()


@pytest.mark.parametrize("name", ["tiny-ldm", "tiny-diffusers", "tiny-prefixed", "tiny-old-diffusers"])
def test_every_layout_loads_the_checkpoints_vae_weights(vae_models, name):
    baked = load_checkpoint(vae_models / "checkpoints" / "tiny-sd15.safetensors", CPU, torch.float32).vae.state_dict()
    loaded = load_vae_file(vae_models / "vae" / f"{name}.safetensors", CPU, torch.float32).state_dict()
    assert loaded.keys() == baked.keys()
    assert all(torch.equal(loaded[k], baked[k]) for k in baked)


def test_a_file_that_is_no_vae_is_refused_with_the_reason(tmp_path):
    save_file({"lora_unet_down_blocks_0.alpha": torch.ones(())}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match="not an SD1.x/SDXL VAE"):
        load_vae_file(tmp_path / "lora.safetensors", CPU, torch.float32)
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_vae_file(tmp_path / "vae.pt", CPU, torch.float32)


def workflow(vae_name=None, seed=1):
    nodes = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    if vae_name is not None:
        nodes["10"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
        nodes["8"]["inputs"]["vae"] = ["10", 0]
    return nodes


def decoded(renderer, wf):
    prepared = renderer.prepare(wf)
    outcome = renderer.run(prepared)
    assert outcome.ok, outcome.error
    return prepared.plan, renderer.engine.cache.get(prepared.plan.signatures["8"])[0]


def test_a_loaded_vae_decodes_as_the_one_it_was_cut_from(renderer):
    _, baked = decoded(renderer, workflow())
    for name in ("tiny-ldm.safetensors", "tiny-diffusers.safetensors"):
        plan, image = decoded(renderer, workflow(name))
        assert torch.equal(image, baked)
        assert plan.model_files == (("vae", name),)
    _, other = decoded(renderer, workflow("other.safetensors"))
    assert (other - baked).abs().max() > 1e-3


def test_the_plan_carries_the_vae_file_and_its_stamp(renderer, vae_models, tmp_path):
    plan, _ = decoded(renderer, workflow("tiny-ldm.safetensors"))
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again.model_files == (("vae", "tiny-ldm.safetensors"),)
    legacy = {k: v for k, v in plan.to_json().items() if k != "model_files"}  # a plan stored by an older farm
    assert Plan.from_json(legacy).model_files == ()
    path = vae_models / "vae" / "tiny-ldm.safetensors"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    try:
        replanned = renderer.prepare(workflow("tiny-ldm.safetensors")).plan
        assert replanned.signatures["10"] != plan.signatures["10"]
        assert replanned.signatures["8"] != plan.signatures["8"]
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_unknown_and_pickle_vae_names_are_refused_at_validation(renderer, vae_models):
    with pytest.raises(ValidationFailed, match="value_not_in_list|not in"):
        renderer.prepare(workflow("missing.safetensors"))
    (vae_models / "vae" / "old.pt").write_bytes(b"\x80")
    try:
        with pytest.raises(ValidationFailed, match="pickle file"):
            renderer.prepare(workflow("old.pt"))
    finally:
        (vae_models / "vae" / "old.pt").unlink()


def test_object_info_is_comfyuis_shape(vae_models, tmp_path):
    ctx = NodeContext(NodeContext.under(tmp_path).models.__class__(vae_models), tmp_path, tmp_path, tmp_path)
    info = default_registry().object_info(ctx, "VAELoader")["VAELoader"]
    assert info["input"]["required"]["vae_name"][0] == ctx.models.names("vae")
    assert "tiny-ldm.safetensors" in info["input"]["required"]["vae_name"][0]
    assert (info["output"], info["name"], info["display_name"], info["category"]) == (
        ["VAE"], "VAELoader", "Load VAE", "loaders")
