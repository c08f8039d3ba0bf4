"""ComfyUI's controlnet_example template (comfyui-workflow-templates, a test-only
dependency) runs through `farm run` unchanged: the file is read where the package installed
it, and the models and the control image it names are made here, under those names, from
the tiny ones (a checkpoint, a ControlNet, a standalone VAE cut from the tiny checkpoint,
a 64 px image). Only sizes and steps are lowered, through --set, as in test_comfy_templates."""
import json
import subprocess
import sys
from importlib.resources import files

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from farm.nodes.registry import default_registry

pytest.importorskip("comfyui_workflow_templates", reason="comfyui-workflow-templates (test extra) is not installed")
TEMPLATE = files("comfyui_workflow_templates").joinpath("templates", "controlnet_example.json")
SMALL = {"5.width": 64, "5.height": 64, "3.steps": 2}


def widget(template: dict, node_type: str) -> str:
    (value,) = [n["widgets_values"][0] for n in template["nodes"] if n["type"] == node_type]
    return value


def standalone_vae(checkpoint, path) -> None:
    """The checkpoint's VAE as a VAE file is (vae-ft-mse-840000-ema-pruned.safetensors):
    the LDM VAE names without the first_stage_model. prefix, farm's header kept."""
    with safe_open(str(checkpoint), "pt") as f:
        tensors = {k.removeprefix("first_stage_model."): f.get_tensor(k) for k in f.keys()
                   if k.startswith("first_stage_model.")}
        metadata = f.metadata()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata)


def test_comfyui_controlnet_example_runs_through_farm_run(tiny_controlnets, tmp_path):
    if not TEMPLATE.is_file():
        pytest.skip("this comfyui-workflow-templates release has no controlnet_example.json")
    missing = {"ControlNetLoader", "ControlNetApplyAdvanced", "Canny", "VAELoader"} - set(default_registry())
    if missing:
        pytest.skip(f"the template also needs {sorted(missing)}, which this branch does not register")
    template = json.loads(TEMPLATE.read_text())
    models = tmp_path / "models"
    for folder, node_type, source in (
            ("checkpoints", "CheckpointLoaderSimple", tiny_controlnets / "checkpoints" / "tiny-sd15.safetensors"),
            ("controlnet", "ControlNetLoader", tiny_controlnets / "controlnet" / "tiny-cn-sd15.safetensors")):
        target = models / folder / widget(template, node_type)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    standalone_vae(tiny_controlnets / "checkpoints" / "tiny-sd15.safetensors",
                   models / "vae" / widget(template, "VAELoader"))
    image = tmp_path / ".farm" / "input" / widget(template, "LoadImage")  # "pasted/image (2).png"
    image.parent.mkdir(parents=True)
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[16:48, 16:48] = 255  # a square: Canny finds its outline for the ControlNet
    Image.fromarray(rgb).save(image)

    overrides = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run([sys.executable, "-m", "farm", "run", str(TEMPLATE), "--local", "--models", str(models),
                             "--output", str(tmp_path / "out"), *overrides], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = sorted((tmp_path / "out").glob("ComfyUI_*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (64, 64)
    assert "done in" in result.stdout
