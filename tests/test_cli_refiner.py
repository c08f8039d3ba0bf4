"""The SDXL refiner: make-checkpoint's tiny-sdxl-refiner is a checkpoint farm loads,
ComfyUI's sdxl_refiner_prompt_example template (UI format, base then refiner) runs through
`farm run` unchanged but for its model names, and the refiner's time ids take ComfyUI's
defaults (the latent's size, aesthetic score 6 positive / 2.5 negative) unless
CLIPTextEncodeSDXLRefiner sets them."""
import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from farm.engine.local import LocalRenderer
from farm.models.make import make_checkpoint
from farm.records.paths import FarmPaths

REFINER = "tiny-sdxl-refiner.safetensors"


def farm(*args, cwd):
    return subprocess.run([sys.executable, "-m", "farm", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def refiner_models(tiny_models, tmp_path_factory):
    path = tiny_models / "checkpoints" / REFINER
    if not path.exists():  # what `farm make-checkpoint tiny-sdxl-refiner PATH --seed 7` writes
        make_checkpoint("tiny-sdxl-refiner", path, seed=7)
    return tiny_models


def test_the_refiner_template_runs_through_farm_run(refiner_models, tmp_path):
    templates = pytest.importorskip("comfyui_workflow_templates",
                                    reason="comfyui-workflow-templates (test extra) is not installed")
    source = files(templates).joinpath("templates", "sdxl_refiner_prompt_example.json")
    if not source.is_file():
        pytest.skip("this comfyui-workflow-templates release has no sdxl_refiner_prompt_example.json")
    workflow = json.loads(source.read_text())
    names = {"sd_xl_base_1.0.safetensors": "tiny-sdxl.safetensors", "sd_xl_refiner_1.0.safetensors": REFINER}
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = names[node["widgets_values"][0]]
    path = tmp_path / "refiner.json"
    path.write_text(json.dumps(workflow))
    out = tmp_path / "out"
    # 2 steps in all: the base runs step 0, the refiner step 1 (the template's 25 and 20)
    result = farm("run", path, "--models", refiner_models, "--output", out, "--local",
                  "--set", "5.width=64", "--set", "5.height=64", "--set", "10.steps=2", "--set", "11.steps=2",
                  "--set", "10.end_at_step=1", "--set", "11.start_at_step=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = [Path(line) for line in result.stdout.splitlines() if line.endswith(".png")]
    assert len(printed) == 1 and printed[0].is_file()


def workflow(positive, negative, seed=3):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": REFINER}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": positive, "7": negative,
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def plain(text):
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}


def refiner_encode(text, ascore, size=64):
    return {"class_type": "CLIPTextEncodeSDXLRefiner",
            "inputs": {"ascore": ascore, "width": size, "height": size, "text": text, "clip": ["4", 1]}}


def test_refiner_time_ids_default_as_comfyui_and_ascore_reaches_the_unet(refiner_models, tmp_path):
    r = LocalRenderer(FarmPaths(refiner_models, tmp_path / "o", tmp_path / "i", tmp_path / "t"),
                      device=torch.device("cpu"))
    try:
        def sampled(wf):
            prepared = r.prepare(wf)
            outcome = r.run(prepared)
            assert outcome.ok, outcome.error
            return r.engine.cache.get(prepared.plan.signatures["3"])[0].samples

        defaults = sampled(workflow(plain("a castle"), plain("blurry")))
        explicit = sampled(workflow(refiner_encode("a castle", 6.0), refiner_encode("blurry", 2.5)))
        assert torch.equal(explicit, defaults)
        assert (sampled(workflow(refiner_encode("a castle", 9.0), refiner_encode("blurry", 2.5))) - defaults
                ).abs().max() > 1e-3
        assert (sampled(workflow(refiner_encode("a castle", 6.0, size=1024), refiner_encode("blurry", 2.5)))
                - defaults).abs().max() > 1e-3
    finally:
        r.close()
