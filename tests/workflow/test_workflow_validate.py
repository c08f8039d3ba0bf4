"""Validation errors, compared with hand-written ComfyUI-shaped bodies."""
import copy

import pytest

from farm.nodes.registry import NodeRegistry, default_registry
from farm.nodes.spec import InputSpec, Limits, Node, NodeContext, NodeSpec, OutputSpec
from farm.workflow import errors as E
from farm.workflow.graph import parse_workflow
from farm.workflow.validate import validate

FAILED = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
          "details": "", "extra_info": {}}


@pytest.fixture
def ctx(tmp_path):
    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("model.safetensors", "old.ckpt"):
        (ckpts / name).write_bytes(b"")  # validation only looks at names
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "cat.png").write_bytes(b"not really a png")
    return NodeContext.under(tmp_path)


def txt2img() -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "out"}},
    }


def run(prompt, ctx, registry=None, **kwargs):
    return validate(parse_workflow(prompt), registry or default_registry(), ctx, **kwargs)


def single_error(prompt, ctx, node_id, **kwargs) -> dict:
    """The one error of `node_id`, after checking the node_errors entry around it."""
    result = run(prompt, ctx, **kwargs)
    body = result.to_comfy()
    assert list(body["node_errors"]) == [node_id]
    entry = body["node_errors"][node_id]
    assert entry["class_type"] == prompt[node_id]["class_type"]
    assert len(entry["errors"]) == 1
    return entry["errors"][0]


def with_clip_skip(value) -> dict:
    prompt = txt2img()
    prompt["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": value}}
    prompt["6"]["inputs"]["clip"] = ["10", 0]
    return prompt


CLIP_SKIP_CONFIG = ["INT", {"default": -1, "min": -24, "max": -1, "step": 1}]


def test_valid_workflow_passes(ctx):
    result = run(txt2img(), ctx)
    assert result.ok and result.outputs_to_execute == ["9"] and result.node_errors == {}
    assert result.to_comfy() == {"node_errors": {}}


def test_required_input_missing_exact_body(ctx):
    prompt = txt2img()
    del prompt["3"]["inputs"]["steps"]
    result = run(prompt, ctx)
    assert not result.ok
    assert result.to_comfy() == {
        "error": {**FAILED},
        "node_errors": {"3": {
            "errors": [{"type": "required_input_missing", "message": "Required input is missing",
                        "details": "steps", "extra_info": {"input_name": "steps"}}],
            "dependent_outputs": ["9"], "class_type": "KSampler"}},
    }


def test_bad_linked_input_for_a_three_list_and_for_a_constant_on_a_link_input(ctx):
    prompt = txt2img()
    prompt["8"]["inputs"]["samples"] = ["3", 0, 1]
    assert single_error(prompt, ctx, "8") == {
        "type": "bad_linked_input", "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
        "details": "samples",
        "extra_info": {"input_name": "samples", "input_config": ["LATENT", {"tooltip": "Latents to decode."}],
                       "received_value": ["3", 0, 1]}}
    prompt["8"]["inputs"]["samples"] = 5
    error = single_error(prompt, ctx, "8")
    assert (error["type"], error["extra_info"]["received_value"]) == ("bad_linked_input", 5)


def test_return_type_mismatch(ctx):
    prompt = txt2img()
    prompt["8"]["inputs"]["samples"] = ["4", 0]  # MODEL into a LATENT input
    assert single_error(prompt, ctx, "8") == {
        "type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
        "details": "samples, received_type(MODEL) mismatch input_type(LATENT)",
        "extra_info": {"input_name": "samples", "input_config": ["LATENT", {"tooltip": "Latents to decode."}],
                       "received_type": "MODEL", "linked_node": ["4", 0]}}


def test_invalid_input_type(ctx):
    reason = "invalid literal for int() with base 10: 'abc'"
    assert single_error(with_clip_skip("abc"), ctx, "10") == {
        "type": "invalid_input_type", "message": "Failed to convert an input value to a INT value",
        "details": f"stop_at_clip_layer, abc, {reason}",
        "extra_info": {"input_name": "stop_at_clip_layer", "input_config": CLIP_SKIP_CONFIG,
                       "received_value": "abc", "exception_message": reason}}


def test_value_smaller_than_min_and_bigger_than_max(ctx):
    assert single_error(with_clip_skip(-30), ctx, "10") == {
        "type": "value_smaller_than_min", "message": "Value -30 smaller than min of -24",
        "details": "stop_at_clip_layer",
        "extra_info": {"input_name": "stop_at_clip_layer", "input_config": CLIP_SKIP_CONFIG, "received_value": -30}}
    assert single_error(with_clip_skip(0), ctx, "10") == {
        "type": "value_bigger_than_max", "message": "Value 0 bigger than max of -1",
        "details": "stop_at_clip_layer",
        "extra_info": {"input_name": "stop_at_clip_layer", "input_config": CLIP_SKIP_CONFIG, "received_value": 0}}


def test_server_limits_act_as_max_and_name_the_cap(ctx):
    limited = NodeContext(ctx.models, ctx.input_dir, ctx.output_dir, ctx.temp_dir,
                          Limits(max_width=1024, max_steps=50))
    prompt = txt2img()
    prompt["5"]["inputs"]["width"] = 2048
    error = single_error(prompt, limited, "5")
    assert error == {
        "type": "value_bigger_than_max", "message": "Value 2048 bigger than max of 1024", "details": "width",
        "extra_info": {"input_name": "width", "received_value": 2048, "limit": "max_width",
                       "input_config": ["INT", {"default": 512, "min": 16, "max": 1024, "step": 8,
                                                "tooltip": "Image width in pixels."}]}}
    prompt = txt2img()
    prompt["3"]["inputs"]["steps"] = 51
    assert single_error(prompt, limited, "3")["message"] == "Value 51 bigger than max of 50"
    prompt["3"]["inputs"]["steps"] = 50
    assert run(prompt, limited).ok
    error = single_error({**prompt, "5": {**prompt["5"], "inputs": {**prompt["5"]["inputs"], "width": 4104}}}, ctx, "5")
    assert error["message"] == "Value 4104 bigger than max of 4096" and error["extra_info"]["limit"] == "max_width"
    raised = NodeContext(ctx.models, ctx.input_dir, ctx.output_dir, ctx.temp_dir, Limits(max_width=20000))
    prompt["5"]["inputs"]["width"] = 16392  # above ComfyUI's own 16384: the node's max, not the farm's cap
    error = single_error(prompt, raised, "5")
    assert error["message"] == "Value 16392 bigger than max of 16384" and "limit" not in error["extra_info"]


def test_value_not_in_list_short_list(ctx):
    prompt = txt2img()
    prompt["11"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "upscale_method": "lanczos",
                                                              "width": 768, "height": 768, "crop": "disabled"}}
    prompt["8"]["inputs"]["samples"] = ["11", 0]
    methods = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
    assert single_error(prompt, ctx, "11") == {
        "type": "value_not_in_list", "message": "Value not in list",
        "details": f"upscale_method: 'lanczos' not in {methods}",
        "extra_info": {"input_name": "upscale_method", "input_config": [methods, {}], "received_value": "lanczos"}}


def test_value_not_in_list_long_list_is_summarised(ctx, tmp_path):
    for i in range(24):
        (tmp_path / "models" / "checkpoints" / f"m{i:02}.safetensors").write_bytes(b"")
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    assert single_error(prompt, ctx, "4") == {
        "type": "value_not_in_list", "message": "Value not in list",
        "details": "ckpt_name: 'missing.safetensors' not in (list of length 26)",
        "extra_info": {"input_name": "ckpt_name", "input_config": None, "received_value": "missing.safetensors"}}


def test_unknown_sampler_is_refused_not_substituted(ctx):
    prompt = txt2img()
    prompt["3"]["inputs"]["sampler_name"] = "euler_magic"
    error = single_error(prompt, ctx, "3")
    assert error["type"] == "value_not_in_list" and error["extra_info"]["received_value"] == "euler_magic"


def test_custom_validation_refuses_pickle_checkpoints(ctx):
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "old.ckpt"
    error = single_error(prompt, ctx, "4")
    assert {k: error[k] for k in ("type", "message", "extra_info")} == {
        "type": "custom_validation_failed", "message": "Custom validation failed for node",
        "extra_info": {"input_name": "ckpt_name"}}
    assert error["details"].startswith("ckpt_name - old.ckpt") and "safetensors" in error["details"]


@pytest.mark.parametrize("link, fragment", [(["99", 0], "'99'"), (["4", 5], "has 3 output(s)")])
def test_exception_during_inner_validation_for_dangling_links(ctx, link, fragment):
    prompt = txt2img()
    prompt["8"]["inputs"]["samples"] = link
    error = single_error(prompt, ctx, "8")
    assert error["type"] == "exception_during_inner_validation"
    assert error["message"] == "Exception when validating inner node"
    assert fragment in error["details"] and error["details"] == error["extra_info"]["exception_message"]
    assert error["extra_info"]["exception_type"] == "LookupError"
    assert error["extra_info"]["linked_node"] == link and error["extra_info"]["input_name"] == "samples"


class Exploding(Node):
    spec = NodeSpec("Exploding", "Exploding", "test", (InputSpec("images", "IMAGE"), InputSpec("n", "INT")),
                    output_node=True)

    @classmethod
    def validate_inputs(cls, ctx, n):
        raise RuntimeError(f"boom {n}")


def test_exception_in_a_custom_validator_is_reported_on_its_node(ctx):
    registry = default_registry()
    registry.register(Exploding)
    prompt = txt2img()
    prompt["20"] = {"class_type": "Exploding", "inputs": {"images": ["8", 0], "n": 3}}
    result = run(prompt, ctx, registry)
    assert result.ok and result.outputs_to_execute == ["9"]
    [error] = result.to_comfy()["node_errors"]["20"]["errors"]
    assert error == {"type": "exception_during_inner_validation", "message": "Exception when validating inner node",
                     "details": "boom 3",
                     "extra_info": {"input_name": "n", "input_config": None, "exception_message": "boom 3",
                                    "exception_type": "RuntimeError", "traceback": []}}


def test_dependency_cycle_is_reported_once_and_blocks_the_output(ctx):
    prompt = txt2img()
    prompt["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["11", 0], "stop_at_clip_layer": -1}}
    prompt["11"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["10", 0], "stop_at_clip_layer": -2}}
    prompt["6"]["inputs"]["clip"] = ["10", 0]
    result = run(prompt, ctx)
    body = result.to_comfy()
    assert body["error"] == FAILED
    [(node_id, entry)] = body["node_errors"].items()
    [error] = entry["errors"]
    assert node_id in {"10", "11"} and entry["dependent_outputs"] == ["9"]
    assert error["type"] == "dependency_cycle" and error["message"] == "Dependency cycle detected"
    assert sorted(error["extra_info"]["cycle_nodes"]) == ["10", "11"]
    assert error["extra_info"]["input_name"] == "clip"


def test_self_loop_is_a_cycle(ctx):
    prompt = txt2img()
    prompt["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["10", 0], "stop_at_clip_layer": -1}}
    prompt["6"]["inputs"]["clip"] = ["10", 0]
    error = single_error(prompt, ctx, "10")
    assert error["type"] == "dependency_cycle" and error["extra_info"]["cycle_nodes"] == ["10"]


def test_missing_node_type_names_node_and_title(ctx):
    prompt = txt2img()
    prompt["12"] = {"class_type": "FancyUpscaler", "inputs": {}, "_meta": {"title": "My Upscaler"}}
    assert run(prompt, ctx).to_comfy() == {
        "error": {"type": "missing_node_type",
                  "message": "Node 'My Upscaler' not found. The custom node may not be installed.",
                  "details": "Node ID '#12'",
                  "extra_info": {"node_id": "12", "class_type": "FancyUpscaler", "node_title": "My Upscaler"}},
        "node_errors": {}}
    prompt["12"] = {"inputs": {}}
    assert run(prompt, ctx).to_comfy()["error"] == {
        "type": "missing_node_type",
        "message": "Node 'ID #12' has no class_type. The workflow may be corrupted or a custom node is missing.",
        "details": "Node ID '#12'", "extra_info": {"node_id": "12", "class_type": None, "node_title": None}}


def test_prompt_no_outputs(ctx):
    prompt = txt2img()
    del prompt["9"]
    assert run(prompt, ctx).to_comfy() == {
        "error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
        "node_errors": {}}


def test_no_prompt_and_prompt_id_helpers():
    assert E.no_prompt().to_comfy() == {"type": "no_prompt", "message": "No prompt provided",
                                        "details": "No prompt provided", "extra_info": {}}
    assert E.check_prompt_id("0b0b6c9e-3a59-4d1f-9c36-2f7d2f0f4a11") is None
    for bad in ("0B0B6C9E-3A59-4D1F-9C36-2F7D2F0F4A11", "0b0b6c9e3a594d1f9c362f7d2f0f4a11", "job-1", 7):
        body = E.check_prompt_id(bad).to_comfy()
        assert (body["type"], body["message"], body["extra_info"]) == (
            "invalid_prompt_id", "prompt_id must be a valid UUID", {})


def test_error_in_shared_ancestor_lists_every_dependent_output(ctx):
    prompt = txt2img()
    prompt["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    body = run(prompt, ctx).to_comfy()
    assert body["error"] == FAILED
    assert list(body["node_errors"]) == ["4"]  # downstream nodes fail without errors of their own
    assert body["node_errors"]["4"]["dependent_outputs"] == ["9", "10"]


def test_partial_failure_runs_the_good_output(ctx):
    prompt = txt2img()
    prompt["11"] = {"class_type": "ImageScale", "inputs": {"image": ["8", 0], "upscale_method": "bicubic",
                                                           "width": 99999, "height": 512, "crop": "disabled"}}
    prompt["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "big"}}
    result = run(prompt, ctx)
    assert result.ok and result.outputs_to_execute == ["9"]
    body = result.to_comfy()
    assert "error" not in body
    assert list(body["node_errors"]) == ["11"] and body["node_errors"]["11"]["dependent_outputs"] == ["12"]
    assert body["node_errors"]["11"]["errors"][0]["type"] == "value_bigger_than_max"

    only_broken = run(prompt, ctx, partial_execution_targets=["12"])
    assert only_broken.to_comfy()["error"] == FAILED and only_broken.outputs_to_execute == []
    only_good = run(prompt, ctx, partial_execution_targets=["9"])
    assert only_good.ok and only_good.outputs_to_execute == ["9"] and only_good.node_errors == {}
    not_an_output = run(prompt, ctx, partial_execution_targets=["3"])
    assert not_an_output.to_comfy()["error"]["type"] == "prompt_no_outputs"


def test_failed_output_details_list_its_own_errors(ctx):
    prompt = txt2img()
    del prompt["9"]["inputs"]["filename_prefix"]
    assert run(prompt, ctx).to_comfy()["error"]["details"] == "Required input is missing: filename_prefix"


def test_nodes_that_feed_no_output_are_not_checked(ctx):
    prompt = txt2img()
    prompt["30"] = {"class_type": "EmptyLatentImage", "inputs": {"width": -5}}
    result = run(prompt, ctx)
    assert result.ok and result.node_errors == {}


def test_nothing_behind_a_mismatched_link_is_reported(ctx):
    prompt = txt2img()
    prompt["8"]["inputs"]["samples"] = ["4", 0]  # mismatch; node 3 is now only reached through it
    prompt["3"]["inputs"]["steps"] = 0
    assert list(run(prompt, ctx).node_errors) == ["8"]


def test_several_errors_on_one_node(ctx):
    prompt = txt2img()
    prompt["3"]["inputs"].update(steps=0, cfg="x")
    del prompt["3"]["inputs"]["seed"]
    types = [e.type.value for e in run(prompt, ctx).node_errors["3"].errors]
    assert types == ["required_input_missing", "value_smaller_than_min", "invalid_input_type"]


def test_constants_are_converted_like_comfyui(ctx):
    prompt = txt2img()
    prompt["3"]["inputs"].update(seed="5", cfg="7", steps=20.9)
    prompt["3"]["inputs"]["not_an_input"] = 1
    result = run(prompt, ctx)
    assert result.ok
    inputs = result.workflow.nodes["3"].inputs
    assert (inputs["seed"], inputs["cfg"], inputs["steps"]) == (5, 7.0, 20)
    assert type(inputs["seed"]) is int and type(inputs["cfg"]) is float
    assert "not_an_input" not in inputs


def test_nan_is_not_a_float(ctx):
    prompt = txt2img()
    prompt["3"]["inputs"]["cfg"] = "nan"
    assert single_error(prompt, ctx, "3")["type"] == "invalid_input_type"


def test_load_image_must_name_a_file_in_input(ctx, tmp_path):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    assert run(prompt, ctx).ok
    for name in ("dog.png", "../input/cat.png"):
        prompt["1"]["inputs"]["image"] = name
        assert single_error(copy.deepcopy(prompt), ctx, "1")["type"] == "value_not_in_list"
    (tmp_path / "input" / "sub").mkdir()
    (tmp_path / "input" / "sub" / "dog.png").write_bytes(b"x")
    prompt["1"]["inputs"]["image"] = "sub/dog.png"
    assert run(prompt, ctx).ok


def test_registry_without_a_node_gives_missing_node_type(ctx):
    full = default_registry()
    registry = NodeRegistry([full.get(name) for name in full if name != "KSampler"])
    assert run(txt2img(), ctx, registry).to_comfy()["error"]["type"] == "missing_node_type"


def test_custom_link_types_follow_comfyui_union_rule(ctx):
    class AnyOut(Node):
        spec = NodeSpec("AnyOut", "AnyOut", "test", (), outputs=(OutputSpec("*", "*"),))

    registry = default_registry()
    registry.register(AnyOut)
    prompt = txt2img()
    prompt["20"] = {"class_type": "AnyOut", "inputs": {}}
    prompt["8"]["inputs"]["samples"] = ["20", 0]
    assert run(prompt, ctx, registry).ok
