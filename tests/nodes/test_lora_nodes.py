"""LoraLoader in the engine on tiny checkpoints: the LoRA changes the image, the resident
base is never reloaded nor left patched (a later base job is bit-identical to one before),
jobs with different LoRAs on one base run together, and a strength sweep is one batch."""
import pytest
import torch

from farm.workflow.prepare import ValidationFailed
from node_rendering import batched_and_alone, cpu_renderer, sampled

KOHYA, PEFT = "tiny-sd15-kohya.safetensors", "tiny-sd15-peft.safetensors"


def workflow(lora=None, strength=1.0, seed=1, ckpt="tiny-sd15.safetensors", model_only=False):
    model, clip = ["4", 0], ["4", 1]
    nodes = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if lora and model_only:
        nodes["10"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": model, "lora_name": lora, "strength_model": strength}}
        model = ["10", 0]
    elif lora:
        nodes["10"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                              "strength_model": strength, "strength_clip": strength}}
        model, clip = ["10", 0], ["10", 1]
    nodes.update({
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": clip}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 6.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0,
            "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "lora"}},
    })
    return nodes


@pytest.fixture(scope="module")
def renderer(tiny_loras, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-out")
    r = cpu_renderer(tiny_loras, out)
    yield r
    r.close()


def base_state(renderer):
    ckpt = renderer.models.checkpoint("tiny-sd15.safetensors")
    modules = (ckpt.unet, *ckpt.text_encoders)
    return [v.clone() for m in modules for v in m.state_dict().values()]


def test_a_lora_changes_the_image_and_leaves_the_resident_base_bit_identical(renderer):
    base = sampled(renderer, workflow())
    state = base_state(renderer)
    with_lora = sampled(renderer, workflow(KOHYA))
    assert (with_lora - base).abs().max() > 1e-2
    assert all(torch.equal(a, b) for a, b in zip(state, base_state(renderer)))
    assert torch.equal(sampled(renderer, workflow(KOHYA, strength=0.0)), base)  # strength 0 is the base
    renderer.engine.cache.clear()  # nothing cached may stand in for the base below
    assert torch.equal(sampled(renderer, workflow()), base)
    assert renderer.models.loads == 1  # one resident copy served every LoRA variant


def test_jobs_with_different_loras_on_one_base_run_together_as_they_run_alone(renderer):
    # two seeds of one LoRA share its loader output, so their KSamplers batch; the others
    # (the base, another LoRA) run beside them in the same engine call
    wfs = [workflow(), workflow(KOHYA, seed=2), workflow(KOHYA, seed=3), workflow(PEFT, 0.5, seed=2)]
    for got, expected in batched_and_alone(renderer, wfs):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_model_only_lora_on_sdxl_and_a_chain_of_two(renderer):
    base = sampled(renderer, workflow(ckpt="tiny-sdxl.safetensors"))
    only = sampled(renderer, workflow("tiny-sdxl-kohya.safetensors", ckpt="tiny-sdxl.safetensors", model_only=True))
    assert (only - base).abs().max() > 1e-2
    chained = workflow(KOHYA)
    chained["11"] = {"class_type": "LoraLoader", "inputs": {"model": ["10", 0], "clip": ["10", 1], "lora_name": PEFT,
                                                            "strength_model": 0.5, "strength_clip": 0.5}}
    for node in ("6", "7"):
        chained[node]["inputs"]["clip"] = ["11", 1]
    chained["3"]["inputs"]["model"] = ["11", 0]
    assert (sampled(renderer, chained) - sampled(renderer, workflow(KOHYA))).abs().max() > 1e-2


def test_a_lora_for_another_base_fails_its_node_with_the_reason(renderer):
    prepared = renderer.prepare(workflow("tiny-sdxl-kohya.safetensors"))
    outcome = renderer.run(prepared)
    assert outcome.error is not None and outcome.error.node_id == "10"
    assert "does not fit this checkpoint" in str(outcome.error)


def test_unknown_and_pickle_lora_names_are_refused_at_validation(renderer, tiny_loras):
    with pytest.raises(ValidationFailed, match="value_not_in_list|not in"):
        renderer.prepare(workflow("missing.safetensors"))
    (tiny_loras / "loras" / "old.pt").write_bytes(b"\x80")
    try:
        with pytest.raises(ValidationFailed, match="pickle file"):
            renderer.prepare(workflow("old.pt"))
    finally:
        (tiny_loras / "loras" / "old.pt").unlink()


def test_with_a_compiled_unet_a_lora_job_runs_on_the_patched_weights(tiny_loras, tmp_path, renderer):
    """The compiled UNet is a stage with weights of its own (farm.models.compiled_stage); a
    LoRA patches the checkpoint's weights in place, so the stage must copy them again when
    the LoRA is applied and again when it is removed. Compared with the eager renderer."""
    from farm.engine.local import LocalRenderer
    from farm.models.compiled import CompileConfig
    from farm.records.paths import FarmPaths

    compiled = LocalRenderer(FarmPaths(tiny_loras, tmp_path / "output", tmp_path / "input", tmp_path / "temp"),
                             device=torch.device("cpu"),
                             compile=CompileConfig(enabled=True, backend="aot_eager", cache_dir=tmp_path / "inductor"))
    try:
        for wf in (workflow(), workflow(KOHYA), workflow(), workflow(KOHYA, strength=0.5)):
            renderer.engine.cache.clear()
            compiled.engine.cache.clear()
            torch.testing.assert_close(sampled(compiled, wf), sampled(renderer, wf), rtol=2e-3, atol=2e-3)
        [stage] = [v for k, v in compiled.models.compiler.report().items() if k.startswith("unet:")]
        assert stage["fallback"] is None and stage["checkpoints"] == ["tiny-sd15.safetensors"]
        # the first job's weights came with the stage; then LoRA in, out, in at 0.5 (and out)
        assert stage["weight_copies"] == 3
    finally:
        compiled.close()
