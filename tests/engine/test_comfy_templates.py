"""ComfyUI's own default templates (the comfyui-workflow-templates package, a test-only
dependency) run on farm: each UI-format file is loaded unchanged and converted, its model
names are swapped for the tiny ones the fixtures make, and it runs to success.

Only the model names are edited in the template itself. To keep CI on two CPU cores in
seconds, the run then lowers sizes and step counts through prepare's overrides (what
`farm run --set 5.width=64` does), which leaves every node, link and other widget value
as the template has it."""
import json
from importlib.resources import files

import numpy as np
import pytest
import torch
from PIL import Image

from farm.engine.local import LocalRenderer
from farm.records.paths import FarmPaths

pytest.importorskip("comfyui_workflow_templates",
                    reason="comfyui-workflow-templates (test extra) is not installed")

MODEL_WIDGETS = {"CheckpointLoaderSimple": "tiny-sd15.safetensors", "LoraLoader": "tiny-sd15-kohya.safetensors"}
# template -> overrides that keep the run small (sizes, steps), by the template's node ids
CASES = {
    "lora.json": {"5.width": 64, "5.height": 64, "3.steps": 2},
    "lora_multiple.json": {"5.width": 64, "5.height": 64, "3.steps": 2},
    "hiresfix_latent_workflow.json": {"5.width": 64, "5.height": 64, "10.width": 96, "10.height": 96,
                                      "3.steps": 2, "11.steps": 2},
    "inpaint_example.json": {"33.megapixels": 0.01, "3.steps": 2},
}


def template(name: str) -> dict:
    path = files("comfyui_workflow_templates").joinpath("templates", name)
    if not path.is_file():
        pytest.skip(f"this comfyui-workflow-templates release has no {name}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def renderer(tiny_loras, tmp_path_factory):
    out = tmp_path_factory.mktemp("templates")
    (out / "input").mkdir()
    rgba = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[16:48, 16:48, 3] = 0  # a transparent square: the inpainting mask
    Image.fromarray(rgba, "RGBA").save(out / "input" / "input.png")  # the name inpaint_example.json loads
    r = LocalRenderer(FarmPaths(tiny_loras, out / "output", out / "input", out / "temp"), device=torch.device("cpu"))
    yield r
    r.close()


@pytest.mark.parametrize("name", list(CASES))
def test_comfyui_default_template_runs(renderer, name):
    workflow = template(name)
    swapped = 0
    for node in workflow["nodes"]:
        if node["type"] in MODEL_WIDGETS:
            node["widgets_values"][0] = MODEL_WIDGETS[node["type"]]
            swapped += 1
    assert swapped, f"{name} names no model farm could swap"
    prepared = renderer.prepare(workflow, CASES[name])
    outcome = renderer.run(prepared)
    assert outcome.ok, outcome.error
    saved = [ref for ref in outcome.images if ref.type == "output"]
    assert saved and all((renderer.paths.output / ref.subfolder / ref.filename).is_file() for ref in saved)
