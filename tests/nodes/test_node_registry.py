import json

import pytest

from farm.nodes.loaders import CheckpointLoaderSimple
from farm.nodes.registry import NodeRegistry, default_registry
from farm.nodes.sampler import SAMPLER_NAMES, SCHEDULER_NAMES
from farm.nodes.spec import InputSpec, Limits, NodeContext


@pytest.fixture
def ctx(tmp_path):
    ckpts = tmp_path / "models" / "checkpoints"
    (ckpts / "sdxl").mkdir(parents=True)
    for name in ("sd15.safetensors", "sdxl/base.safetensors", "legacy.ckpt", "notes.txt"):
        (ckpts / name).write_bytes(b"")
    (tmp_path / "input" / "uploads").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "uploads/c.webp", "readme.txt"):
        (tmp_path / "input" / name).write_bytes(b"x")
    # caps raised to ComfyUI's own maxima: /object_info then reads exactly as ComfyUI's
    return NodeContext.under(tmp_path, Limits(max_width=16384, max_height=16384, max_batch_size=4096, max_steps=10000))


def test_default_registry_has_the_builtins():
    assert set(default_registry()) == {
        "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "EmptyLatentImage", "KSampler",
        "KSamplerAdvanced", "VAEDecode", "VAEEncode", "LoadImage", "SaveImage", "PreviewImage", "LatentUpscale",
        "ImageScale", "LoraLoader", "LoraLoaderModelOnly", "LatentUpscaleBy", "RepeatLatentBatch", "LatentFromBatch",
        "SetLatentNoiseMask", "VAEEncodeForInpaint", "InpaintModelConditioning", "ImageScaleBy",
        "ImageScaleToTotalPixels", "ImageInvert", "LoadImageMask", "ConditioningConcat",
        "ControlNetLoader", "ControlNetApplyAdvanced", "ControlNetApply", "Canny",
        "VAELoader", "ConditioningCombine", "ConditioningSetArea", "ConditioningSetAreaPercentage",
        "ConditioningSetTimestepRange", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "EasyCache"}


def test_object_info_ksampler_shape(ctx):
    info = default_registry().object_info(ctx, "KSampler")
    assert info == {"KSampler": {
        "input": {"required": {
            "model": ["MODEL", {"tooltip": "The denoising model."}],
            "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True,
                             "tooltip": "Seed of the initial noise."}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Number of denoising steps."}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale: how strongly the prompt steers."}],
            "sampler_name": [list(SAMPLER_NAMES), {"tooltip": "Sampling algorithm."}],
            "scheduler": [list(SCHEDULER_NAMES), {"tooltip": "Noise schedule (sigmas)."}],
            "positive": ["CONDITIONING", {"tooltip": "What the image should show."}],
            "negative": ["CONDITIONING", {"tooltip": "What the image should avoid."}],
            "latent_image": ["LATENT", {"tooltip": "Latents to denoise."}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Fraction of the schedule to run; below 1 keeps part of the input "
                                             "latent."}],
        }},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                     "negative", "latent_image", "denoise"]},
        "output": ["LATENT"], "output_is_list": [False], "output_name": ["LATENT"],
        "name": "KSampler", "display_name": "KSampler",
        "description": "Denoises a latent with a model, guided by positive and negative conditioning.",
        "python_module": "nodes", "category": "sampling", "output_node": False,
    }}
    assert {"euler", "dpmpp_2m", "ddim"} <= set(SAMPLER_NAMES) and {"karras", "normal"} <= set(SCHEDULER_NAMES)


def test_object_info_checkpoint_loader_lists_the_models_folder(ctx):
    assert default_registry().object_info(ctx, "CheckpointLoaderSimple") == {"CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["legacy.ckpt", "sd15.safetensors", "sdxl/base.safetensors"],
                                             {"tooltip": "Checkpoint file in models/checkpoints."}]}},
        "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"], "output_is_list": [False, False, False],
        "output_name": ["MODEL", "CLIP", "VAE"],
        "name": "CheckpointLoaderSimple", "display_name": "Load Checkpoint",
        "description": "Loads a safetensors checkpoint: the denoising model, its text encoder and its VAE.",
        "python_module": "nodes", "category": "loaders", "output_node": False,
    }}


def test_object_info_bare_types_hidden_inputs_and_output_nodes(ctx):
    info = default_registry().object_info(ctx)
    assert set(info) == set(default_registry())
    assert info["VAEEncode"]["input"] == {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}}
    save = info["SaveImage"]
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert save["input_order"] == {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]}
    assert save["output_node"] is True and save["output"] == [] and info["PreviewImage"]["output_node"] is True
    assert save["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert info["CLIPTextEncode"]["input"]["required"]["text"] == ["STRING", {"multiline": True,
                                                                               "tooltip": "The prompt to encode."}]
    assert info["LoadImage"]["input"]["required"]["image"] == [["a.jpg", "b.png", "uploads/c.webp"],
                                                              {"image_upload": True}]
    assert info["KSamplerAdvanced"]["input"]["required"]["noise_seed"][1]["control_after_generate"] is True
    assert info["LatentUpscale"]["input"]["required"]["crop"] == [["disabled", "center"]]
    json.dumps(info)  # what /object_info sends must be JSON


def test_object_info_shows_the_server_limits(ctx):
    limited = NodeContext(ctx.models, ctx.input_dir, ctx.output_dir, ctx.temp_dir,
                          Limits(max_width=2048, max_height=1024, max_batch_size=8, max_steps=150))
    latent = default_registry().object_info(limited, "EmptyLatentImage")["EmptyLatentImage"]["input"]["required"]
    assert [latent[k][1]["max"] for k in ("width", "height", "batch_size")] == [2048, 1024, 8]
    sampler = default_registry().object_info(limited, "KSampler")["KSampler"]["input"]["required"]
    assert sampler["steps"][1]["max"] == 150


def test_unknown_class_gives_an_empty_answer(ctx):
    assert default_registry().object_info(ctx, "NoSuchNode") == {}


def test_registering_two_classes_under_one_name_is_refused():
    class Impostor(CheckpointLoaderSimple):
        pass

    registry = NodeRegistry([CheckpointLoaderSimple])
    registry.register(CheckpointLoaderSimple)  # the same class again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Impostor)


@pytest.mark.parametrize("name, refused", [("a.ckpt", True), ("sub/b.PT", True), ("c.bin", True),
                                           ("d.pth", True), ("e.safetensors", False), ("diffusers-folder", False)])
def test_checkpoint_loader_refuses_pickles(ctx, name, refused):
    message = CheckpointLoaderSimple.validate_inputs(ctx, ckpt_name=name)
    assert (message is not None) == refused
    if refused:
        assert "safetensors" in message and name in message


def test_input_spec_declarations_are_checked():
    with pytest.raises(ValueError, match="COMBO"):
        InputSpec("x", "COMBO")
    with pytest.raises(ValueError, match="COMBO"):
        InputSpec("x", "INT", choices=("a",))
    with pytest.raises(ValueError, match="cap"):
        InputSpec("x", "INT", cap="max_depth")
