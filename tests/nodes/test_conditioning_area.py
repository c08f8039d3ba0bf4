"""ConditioningCombine, ConditioningSetArea(-Percentage) and ConditioningSetTimestepRange on
the tiny SD1.5 checkpoint, each against a reference computed without the node: a prompt
combined with itself is the prompt, a range over the whole schedule is no range, an empty
range is no entry, an area changes one denoising step only inside its box, and jobs with
regions batched together give what each gives alone."""
import pytest
import torch

from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from node_rendering import batched_and_alone, cpu_renderer, sampled


@pytest.fixture(scope="module")
def renderer(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("regions")
    r = cpu_renderer(tiny_models, out)
    yield r
    r.close()


def workflow(positive_nodes=None, positive="6", seed=1, steps=2, ckpt="tiny-sd15.safetensors", size=64):
    nodes = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red boat at sea", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": [positive, 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    nodes.update(positive_nodes or {})
    return nodes


def combine(a, b):
    return {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": [a, 0], "conditioning_2": [b, 0]}}


def timestep_range(source, start, end):
    return {"class_type": "ConditioningSetTimestepRange",
            "inputs": {"conditioning": [source, 0], "start": start, "end": end}}


def area(source, width, height, x, y, strength=1.0):
    return {"class_type": "ConditioningSetArea", "inputs": {"conditioning": [source, 0], "width": width,
                                                            "height": height, "x": x, "y": y, "strength": strength}}


def test_a_prompt_combined_with_itself_is_the_prompt(renderer):
    plain = sampled(renderer, workflow())
    doubled = sampled(renderer, workflow({"20": combine("6", "6")}, positive="20"))
    # the UNet sees A, A, negative in one call instead of A, negative: float rounding only
    torch.testing.assert_close(doubled, plain, rtol=0, atol=1e-5)
    other = sampled(renderer, workflow({"20": combine("6", "12")}, positive="20"))
    assert (other - plain).abs().max() > 1e-3


def test_a_range_over_the_whole_schedule_is_no_range_and_an_empty_one_no_entry(renderer):
    plain = sampled(renderer, workflow())
    assert torch.equal(sampled(renderer, workflow({"20": timestep_range("6", 0.0, 1.0)}, positive="20")), plain)
    empty = {"20": timestep_range("12", 1.0, 1.0), "21": combine("6", "20")}
    assert torch.equal(sampled(renderer, workflow(empty, positive="21")), plain)
    late = {"20": timestep_range("12", 0.5, 1.0), "21": combine("6", "20")}
    assert (sampled(renderer, workflow(late, positive="21")) - plain).abs().max() > 1e-3


def test_an_area_changes_one_step_only_inside_its_box(renderer):
    # one euler step from sigma_max to 0 returns the first prediction itself; outside the
    # box that prediction is the plain prompt's, bit for bit (later steps would spread the
    # box's effect through the UNet's receptive field, in ComfyUI too)
    plain = sampled(renderer, workflow(steps=1, size=128))
    boxed = {"20": area("12", 64, 64, 64, 0, strength=2.0), "21": combine("6", "20")}
    got = sampled(renderer, workflow(boxed, positive="21", steps=1, size=128))
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[0:8, 8:16] = True  # 64x64 px at x=64, y=0 of 128x128: latent rows 0..7, columns 8..15
    assert torch.equal(got[..., ~inside], plain[..., ~inside])
    assert (got[..., inside] - plain[..., inside]).abs().min() > 0
    percent = {"20": {"class_type": "ConditioningSetAreaPercentage", "inputs": {
        "conditioning": ["12", 0], "width": 0.5, "height": 0.5, "x": 0.5, "y": 0.0, "strength": 2.0}},
        "21": combine("6", "20")}
    assert torch.equal(sampled(renderer, workflow(percent, positive="21", steps=1, size=128)), got)


def test_an_area_outside_the_image_fails_its_sampler_with_the_reason(renderer):
    prepared = renderer.prepare(workflow({"20": area("12", 64, 64, 128, 0), "21": combine("6", "20")},
                                         positive="21"))
    outcome = renderer.run(prepared)
    assert outcome.error is not None and outcome.error.node_id == "3"
    assert "outside the 64x64 image" in str(outcome.error)


def test_jobs_with_regions_batched_together_give_what_each_gives_alone(renderer):
    boxed = {"20": area("12", 64, 64, 0, 64), "21": combine("6", "20")}
    wfs = [workflow(boxed, positive="21", seed=2, size=128),
           workflow(seed=3, size=128),
           workflow({"20": timestep_range("12", 0.3, 1.0), "21": combine("6", "20")}, positive="21", seed=4,
                    size=128),
           workflow(boxed, positive="21", seed=5, size=128, ckpt="tiny-sdxl.safetensors"),
           workflow(seed=6, size=128, ckpt="tiny-sdxl.safetensors")]
    for got, expected in batched_and_alone(renderer, wfs):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_object_info_has_comfyuis_inputs(tmp_path):
    info = default_registry().object_info(NodeContext.under(tmp_path))
    area_inputs = info["ConditioningSetArea"]["input"]["required"]
    assert area_inputs["width"] == ["INT", {"default": 64, "min": 64, "max": 16384, "step": 8}]
    assert area_inputs["x"] == ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}]
    assert area_inputs["strength"][1] | {"tooltip": None} == {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                                             "tooltip": None}
    assert info["ConditioningSetAreaPercentage"]["input"]["required"]["height"] == [
        "FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}]
    assert info["ConditioningSetTimestepRange"]["input"]["required"]["start"] == [
        "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}]
    assert info["ConditioningSetTimestepRange"]["category"] == "advanced/conditioning"
    assert info["ConditioningCombine"]["input_order"] == {"required": ["conditioning_1", "conditioning_2"]}
    assert info["ConditioningCombine"]["display_name"] == "Conditioning (Combine)"
