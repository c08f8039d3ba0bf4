"""Session fixtures shared by every test folder: tiny checkpoints made once (real
safetensors files in the LDM layout, written by farm's own make-checkpoint), and one local
Ray cluster with one farm on it (Ray takes ~10 s to start, each worker ~10 s to import
torch): two logical GPUs on this CPU machine, so two GpuWorkers run the very code a GPU
node runs."""
import json
from importlib.resources import files
from pathlib import Path

import pytest

from farm.models.make import make_checkpoint


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A ComfyUI-style models folder with tiny-sd15 and tiny-sdxl single-file checkpoints."""
    root = tmp_path_factory.mktemp("models")
    for arch in ("tiny-sd15", "tiny-sdxl"):
        make_checkpoint(arch, root / "checkpoints" / f"{arch}.safetensors", seed=7)
    return root


# LoRA files in tiny_models/loras: (arch, layout) -> file name
TINY_LORAS = {("tiny-lora-sd15", "kohya"): "tiny-sd15-kohya.safetensors",
              ("tiny-lora-sd15", "peft"): "tiny-sd15-peft.safetensors",
              ("tiny-lora-sdxl", "kohya"): "tiny-sdxl-kohya.safetensors",
              ("tiny-lora-sdxl", "peft"): "tiny-sdxl-peft.safetensors"}


@pytest.fixture(scope="session")
def tiny_loras(tiny_models) -> Path:
    """tiny_models with random LoRAs for both tiny bases, in both key layouts, in loras/."""
    from farm.models.make_lora import make_lora

    for (arch, layout), name in TINY_LORAS.items():
        path = tiny_models / "loras" / name
        if not path.exists():
            make_lora(arch, path, seed=3, layout=layout)
    return tiny_models


RAY_CPUS, RAY_GPUS = 4, 2  # actors reserve a CPU each for scheduling; workers one logical GPU each
TINY = {"5.width": 64, "5.height": 64, "5.batch_size": 1, "3.steps": 2}


@pytest.fixture(scope="session")
def ray_farm(tiny_models, tmp_path_factory):
    """A Farm (the Python API) on a local Ray cluster with two logical GPUs."""
    from actors import cluster
    from farm.client import Farm

    root = tmp_path_factory.mktemp("farm")
    cluster.init_local(num_gpus=RAY_GPUS, num_cpus=RAY_CPUS)
    farm = Farm.local(models=tiny_models, root=root, num_workers=RAY_GPUS, db=root / "queue.sqlite")
    farm.wait_for_workers(RAY_GPUS)
    yield farm
    farm.close(stop=True)
    cluster.shutdown()


@pytest.fixture(scope="session")
def txt2img() -> dict:
    """The sample workflow on the tiny SD1.5 checkpoint, 64x64, 2 steps."""
    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    for key, value in TINY.items():
        node, _, name = key.partition(".")
        workflow[node]["inputs"][name] = value
    return workflow


# ControlNet files in tiny_models/controlnet, all seed 3 (so the same weights in every layout):
# name -> (arch, layout); a name without .safetensors is a diffusers folder
TINY_CONTROLNETS = {"tiny-cn-sd15.safetensors": ("tiny-controlnet-sd15", "ldm"),
                    "tiny-cn-sd15-diffusers": ("tiny-controlnet-sd15", "diffusers"),
                    "tiny-cn-sd15-diffkeys.safetensors": ("tiny-controlnet-sd15", "diffusers"),
                    "tiny-cn-sdxl.safetensors": ("tiny-controlnet-sdxl", "ldm")}


@pytest.fixture(scope="session")
def tiny_controlnets(tiny_models) -> Path:
    """tiny_models with random ControlNets for both tiny bases in controlnet/."""
    from farm.models.make_controlnet import make_controlnet

    for name, (arch, layout) in TINY_CONTROLNETS.items():
        if not (tiny_models / "controlnet" / name).exists():
            make_controlnet(arch, tiny_models / "controlnet" / name, seed=3, layout=layout)
    return tiny_models
