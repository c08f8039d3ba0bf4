import hashlib

import pytest

from farm.errors import NodeExecutionError, WorkflowFormatError
from farm.nodes.image import LoadImage
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.workflow.graph import Link, parse_workflow
from farm.workflow.plan import make_plan
from farm.workflow.validate import validate


@pytest.fixture
def ctx(tmp_path):
    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("model.safetensors", "refiner.safetensors"):
        (ckpts / name).write_bytes(b"")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "cat.png").write_bytes(b"one")
    return NodeContext.under(tmp_path)


def txt2img(seed=1, text="a cat", cfg=7.0, steps=20, width=512) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "out"}},
    }


def plan_of(prompt, ctx, outputs=None):
    registry = default_registry()
    workflow = parse_workflow(prompt)
    result = validate(workflow, registry, ctx)
    assert result.ok, result.to_comfy()
    return make_plan(workflow, outputs or result.outputs_to_execute, registry, ctx)


def renumber(prompt: dict, mapping: dict) -> dict:
    out = {}
    for node_id in reversed(list(prompt)):  # another order too
        node = prompt[node_id]
        inputs = {k: [mapping[v[0]], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        out[mapping[node_id]] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def test_order_is_topological_and_ties_follow_the_workflow(ctx):
    plan = plan_of(txt2img(), ctx)
    assert plan.order == ("4", "5", "6", "7", "3", "8", "9")
    assert plan.outputs == ("9",)


def test_plan_holds_only_ancestors_of_the_requested_outputs(ctx):
    prompt = txt2img()
    prompt["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0], "vae": ["4", 2]}}
    prompt["22"] = {"class_type": "PreviewImage", "inputs": {"images": ["21", 0]}}
    prompt["30"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "unused", "clip": ["4", 1]}}
    assert plan_of(prompt, ctx, ["22"]).order == ("4", "20", "21", "22")
    both = plan_of(prompt, ctx)
    assert set(both.order) == set(prompt) - {"30"}
    position = {n: i for i, n in enumerate(both.order)}
    for node_id in both.order:  # every node after the nodes it links to
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list):
                assert position[value[0]] < position[node_id]


def test_signatures_do_not_depend_on_node_ids(ctx):
    mapping = {"3": "30", "4": "1", "5": "12", "6": "7", "7": "6", "8": "100", "9": "2"}
    original = plan_of(txt2img(), ctx)
    renamed = plan_of(renumber(txt2img(), mapping), ctx)
    assert {mapping[n]: s for n, s in original.signatures.items()} == renamed.signatures
    assert original.batch_key == renamed.batch_key
    assert len(set(original.signatures.values())) == len(original.signatures)  # all nodes differ here


def test_identical_subgraph_in_one_workflow_shares_a_signature(ctx):
    prompt = txt2img(text="blurry")  # positive and negative now the same node twice
    plan = plan_of(prompt, ctx)
    assert plan.signatures["6"] == plan.signatures["7"]


def test_a_changed_constant_changes_its_node_and_everything_below(ctx):
    base = plan_of(txt2img(), ctx).signatures
    changed = plan_of(txt2img(steps=21), ctx).signatures
    assert [n for n in base if base[n] != changed[n]] == ["3", "8", "9"]
    text = plan_of(txt2img(text="a dog"), ctx).signatures
    assert [n for n in base if base[n] != text[n]] == ["6", "3", "8", "9"]


def test_values_that_convert_equal_sign_equal(ctx):
    assert plan_of(txt2img(seed="5", cfg=7), ctx).signatures == plan_of(txt2img(seed=5, cfg=7.0), ctx).signatures


def test_batch_key_ignores_only_batchable_constants(ctx):
    base = plan_of(txt2img(), ctx)
    other = plan_of(txt2img(seed=99, text="a dog", cfg=4.5), ctx)
    assert base.batch_key == other.batch_key
    assert base.signatures["3"] != other.signatures["3"]
    assert base.batch_signatures == other.batch_signatures
    assert plan_of(txt2img(width=768), ctx).batch_key != base.batch_key


def with_sampler(prompt: dict, sampler_name: str) -> dict:
    prompt["3"]["inputs"]["sampler_name"] = sampler_name
    return prompt


def test_steps_are_batchable_only_where_the_sampler_takes_one_schedule_per_row(ctx):
    # euler takes one schedule per row (farm.sampling.row_schedules): 20 and 30 steps share a batch
    assert plan_of(txt2img(steps=30), ctx).batch_key == plan_of(txt2img(), ctx).batch_key
    assert plan_of(txt2img(steps=30), ctx).signatures["3"] != plan_of(txt2img(), ctx).signatures["3"]
    # the SDE samplers and UniPC run one schedule per batch
    for name in ("dpmpp_2m_sde", "uni_pc", "lms"):
        assert (plan_of(with_sampler(txt2img(steps=30), name), ctx).batch_key
                != plan_of(with_sampler(txt2img(), name), ctx).batch_key)


def test_checkpoints_used_are_listed_once_in_order(ctx):
    prompt = txt2img()
    prompt["40"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "refiner.safetensors"}}
    prompt["41"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}}
    prompt["8"]["inputs"]["vae"] = ["40", 2]
    prompt["7"]["inputs"]["clip"] = ["41", 1]
    assert plan_of(prompt, ctx).checkpoints == ("model.safetensors", "refiner.safetensors")


def test_plan_workflow_is_normalized(ctx):
    prompt = txt2img(seed="5")
    prompt["3"]["inputs"]["extra"] = 1
    nodes = plan_of(prompt, ctx).workflow.nodes
    assert nodes["3"].inputs["seed"] == 5 and "extra" not in nodes["3"].inputs
    assert nodes["3"].inputs["model"] == Link("4", 0)


def load_image_prompt():
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "area", "width": 64,
                                                     "height": 64, "crop": "center"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "small"}},
    }


def test_load_image_fingerprint_is_the_file_hash_and_reaches_the_signature(ctx):
    path = ctx.input_dir / "cat.png"
    assert LoadImage.fingerprint(ctx, image="cat.png") == hashlib.sha256(b"one").hexdigest()
    first = plan_of(load_image_prompt(), ctx).signatures
    path.write_bytes(b"two")
    second = plan_of(load_image_prompt(), ctx).signatures
    assert all(first[n] != second[n] for n in ("1", "2", "3"))
    path.write_bytes(b"one")
    assert plan_of(load_image_prompt(), ctx).signatures == first


def test_fingerprint_of_a_vanished_file_names_the_node(ctx):
    registry = default_registry()
    workflow = parse_workflow(load_image_prompt())
    assert validate(workflow, registry, ctx).ok
    (ctx.input_dir / "cat.png").unlink()
    with pytest.raises(NodeExecutionError, match="node 1 .LoadImage."):
        make_plan(workflow, ["3"], registry, ctx)


def test_planning_a_cycle_is_refused(ctx):
    prompt = txt2img()
    prompt["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["11", 0], "stop_at_clip_layer": -1}}
    prompt["11"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["10", 0], "stop_at_clip_layer": -1}}
    prompt["6"]["inputs"]["clip"] = ["10", 0]
    with pytest.raises(WorkflowFormatError, match="cycle"):
        make_plan(parse_workflow(prompt), ["9"], default_registry(), ctx)
