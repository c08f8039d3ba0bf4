"""EasyCache in the engine on the tiny checkpoint: off by default, exact at threshold 0,
skipping steps (and changing the image) when asked, a job's result independent of the
batch it runs in, and bad settings refused at validation."""
import logging

import pytest
import torch

from farm.workflow.prepare import ValidationFailed
from node_rendering import batched_and_alone, cpu_renderer, sampled


def workflow(cache: dict | None = None, seed=1, steps=12):
    model = ["4", 0]
    nodes = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}}}
    if cache is not None:
        nodes["10"] = {"class_type": "EasyCache", "inputs": {"model": model, "reuse_threshold": 0.2,
                                                             "start_percent": 0.15, "end_percent": 0.95,
                                                             "verbose": False, **cache}}
        model = ["10", 0]
    nodes.update({
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "easycache"}},
    })
    return nodes


@pytest.fixture(scope="module")
def renderer(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("easycache-out")
    r = cpu_renderer(tiny_models, out)
    yield r
    r.close()


def skipped_counts(caplog) -> list[tuple[int, int]]:
    found = []
    for record in caplog.records:
        words = record.getMessage().split()
        if words[:2] == ["EasyCache", "skipped"]:
            found.append((int(words[2]), int(words[4])))
    return found


def test_threshold_zero_is_exact_and_a_large_one_skips_steps(renderer, caplog):
    base = sampled(renderer, workflow())
    with caplog.at_level(logging.INFO, logger="farm.nodes.ksampling"):
        exact = sampled(renderer, workflow({"reuse_threshold": 0.0}))
        assert skipped_counts(caplog) == [(0, 12)]
        caplog.clear()
        approx = sampled(renderer, workflow({"reuse_threshold": 3.0}))
        (skipped, calls), = skipped_counts(caplog)
    assert torch.equal(exact, base)
    assert calls == 12 and 0 < skipped < 12
    assert (approx - base).abs().max() > 1e-4  # an approximation: the latent changes


def test_a_job_with_easycache_gives_the_same_result_in_a_batch_as_alone(renderer):
    wfs = [workflow({"reuse_threshold": 3.0}, seed=2), workflow({"reuse_threshold": 3.0}, seed=3), workflow(seed=4)]
    for got, expected in batched_and_alone(renderer, wfs):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bad_settings_are_refused_at_validation(renderer):
    with pytest.raises(ValidationFailed, match="start_percent"):
        renderer.prepare(workflow({"start_percent": 0.9, "end_percent": 0.2}))
    with pytest.raises(ValidationFailed, match="reuse_threshold"):
        renderer.prepare(workflow({"reuse_threshold": 5.0}))


def test_object_info_lists_comfyuis_inputs_and_defaults(renderer):
    from farm.nodes import default_registry

    info = default_registry().object_info(renderer.node_ctx, "EasyCache")["EasyCache"]
    assert info["input_order"]["required"] == ["model", "reuse_threshold", "start_percent", "end_percent", "verbose"]
    assert info["input"]["required"]["reuse_threshold"][1]["default"] == 0.2
    assert info["input"]["required"]["start_percent"][1]["default"] == 0.15
    assert info["input"]["required"]["end_percent"][1]["default"] == 0.95
    assert info["output"] == ["MODEL"]
