"""The engine on real tiny checkpoints: caching by signature, events, interrupts, node
errors, and batched runs equal to one-by-one runs."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from farm.engine import JobContext, PlannedJob
from farm.engine.local import LocalRenderer
from farm.errors import Interrupted
from farm.records.events import EventType
from farm.records.paths import FarmPaths
from farm.workflow.prepare import ValidationFailed


def txt2img(seed=1, text="a lighthouse at dusk", cfg=6.0, sampler="euler", steps=3, size=64, batch=1,
            ckpt="tiny-sd15.safetensors", prefix="t"):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "karras", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


@pytest.fixture()
def renderer(tiny_models, tmp_path):
    r = LocalRenderer(FarmPaths(tiny_models, tmp_path / "output", tmp_path / "input", tmp_path / "temp"),
                      device=torch.device("cpu"))
    yield r
    r.close()


def planned(renderer, workflow, events=None, prompt_id=None):
    prepared = renderer.prepare(workflow)
    ctx = JobContext(prompt_id or prepared.prompt_id, prepared.prompt, None, None, events or (lambda *a: None))
    return prepared, PlannedJob(ctx, prepared.plan)


def latent_of(renderer, prepared):
    return renderer.engine.cache.get(prepared.plan.signatures["3"])[0].samples


def test_new_seed_reuses_loader_and_text_encodings(renderer):
    first = renderer.run(renderer.prepare(txt2img(seed=1)))
    assert first.ok
    runs_before = dict(renderer.engine.node_runs)
    assert runs_before["CheckpointLoaderSimple"] == 1 and runs_before["CLIPTextEncode"] == 2
    second = renderer.run(renderer.prepare(txt2img(seed=2)))
    assert second.ok
    runs = renderer.engine.node_runs
    assert runs["CheckpointLoaderSimple"] == 1  # not loaded again
    assert runs["CLIPTextEncode"] == 2  # neither prompt encoded again
    assert runs["KSampler"] == 2 and runs["VAEDecode"] == 2
    assert set(second.cached_nodes) == {"4", "5", "6", "7"}
    assert renderer.models.loads == 1


def test_identical_subgraph_under_other_ids_is_a_cache_hit(renderer):
    renderer.run(renderer.prepare(txt2img(seed=5)))
    renumbered = {str(int(k) + 100): v for k, v in json.loads(json.dumps(txt2img(seed=5))).items()}
    for node in renumbered.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [str(int(value[0]) + 100), value[1]]
    outcome = renderer.run(renderer.prepare(renumbered))
    assert outcome.executed_nodes == []  # every node, the SaveImage included, came from the cache


def test_events_follow_comfyui_order(renderer):
    seen = []
    prepared, job = planned(renderer, txt2img(seed=3, steps=3), events=lambda e: seen.append((e.type.value, e.data)))
    outcome = renderer.engine.run(job)
    assert outcome.ok
    types = [t for t, _ in seen]
    assert types[:2] == ["execution_start", "execution_cached"]
    assert types[-2:] == ["execution_success", "executing"] and seen[-1][1]["node"] is None
    progress = [d for t, d in seen if t == "progress"]
    assert [(d["value"], d["max"], d["node"]) for d in progress] == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
    executed = [d for t, d in seen if t == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "9"
    image = executed[0]["output"]["images"][0]
    assert image["type"] == "output" and image["filename"].endswith("_.png")
    assert all(d["prompt_id"] == job.context.prompt_id for _, d in seen)
    # the engine hands the same file to its caller typed, as it named it in the event
    assert [ref.as_ui() for ref in outcome.images] == [image]


def test_saved_png_carries_prompt_and_workflow(renderer, tmp_path):
    prepared = renderer.prepare(txt2img(seed=4, prefix="shots/a"))
    outcome = renderer.run(prepared, extra_pnginfo={"workflow": {"nodes": [], "links": []}})
    image = outcome.outputs["9"]["images"][0]
    assert image["subfolder"] == "shots" and image["filename"] == "a_00001_.png"
    with Image.open(tmp_path / "output" / "shots" / image["filename"]) as png:
        assert json.loads(png.text["prompt"]) == prepared.prompt
        assert json.loads(png.text["workflow"]) == {"nodes": [], "links": []}
        assert png.size == (64, 64)
    again = renderer.run(renderer.prepare(txt2img(seed=44, prefix="shots/a")))
    assert again.outputs["9"]["images"][0]["filename"] == "a_00002_.png"


def test_prefix_escaping_output_folder_is_refused_before_anything_runs(renderer, tmp_path):
    with pytest.raises(ValidationFailed) as refused:
        renderer.prepare(txt2img(seed=6, prefix="../../evil"))
    assert "9" in refused.value.result.to_comfy()["node_errors"]
    assert not list(tmp_path.parent.glob("evil*"))
    assert renderer.run(renderer.prepare(txt2img(seed=6))).ok  # the engine goes on


def test_interrupt_stops_at_a_sampler_step(renderer):
    seen = []

    def events(event):
        seen.append(event.type.value)
        if event.type is EventType.PROGRESS and event.data["value"] == 2:
            renderer.engine.interrupt.set()

    prepared, job = planned(renderer, txt2img(seed=7, steps=6), events=events)
    outcome = renderer.engine.run(job)
    assert isinstance(outcome.error, Interrupted)
    assert seen.count("progress") == 2
    assert "execution_interrupted" in seen and "executed" not in seen


LONG_TEXT = "a red lighthouse on a cliff at dusk, waves, " * 400  # ~18,000 characters, ~50 CLIP chunks


def stop_when_executing(renderer, node_id, seen):
    def events(event):
        seen.append(event)
        if event.type is EventType.EXECUTING and event.data["node"] == node_id:
            renderer.engine.interrupt.set()  # the node has started: the stop must land inside it
    return events


def interrupted_message(seen) -> dict:
    [data] = [e.data for e in seen if e.type is EventType.EXECUTION_INTERRUPTED]
    assert set(data) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}  # ComfyUI's keys
    assert seen[-1].type is EventType.EXECUTING and seen[-1].data["node"] is None
    return data


def test_interrupt_during_text_encoding_of_a_long_prompt_stops_in_that_node(renderer):
    seen = []
    prepared, job = planned(renderer, txt2img(seed=21, text=LONG_TEXT), events=stop_when_executing(renderer, "6", seen))
    outcome = renderer.engine.run(job)
    assert isinstance(outcome.error, Interrupted)
    stop = interrupted_message(seen)
    assert (stop["node_id"], stop["node_type"]) == ("6", "CLIPTextEncode")
    assert "6" not in stop["executed"] and "3" not in stop["executed"]
    assert not any(e.type in (EventType.PROGRESS, EventType.EXECUTED) for e in seen)
    assert renderer.run(renderer.prepare(txt2img(seed=21, text=LONG_TEXT))).ok  # the next job runs normally


def test_interrupt_within_a_sampler_step_stops_before_the_step_ends(renderer):
    seen = []
    prepared, job = planned(renderer, txt2img(seed=22, steps=1), events=stop_when_executing(renderer, "3", seen))
    outcome = renderer.engine.run(job)
    assert isinstance(outcome.error, Interrupted)
    stop = interrupted_message(seen)
    assert (stop["node_id"], stop["node_type"]) == ("3", "KSampler")
    assert not any(e.type is EventType.PROGRESS for e in seen)  # the one step never finished
    assert renderer.run(renderer.prepare(txt2img(seed=22, steps=1))).ok


def test_a_cached_output_node_is_announced_again_with_its_images(renderer):
    first, again = [], []
    renderer.run(renderer.prepare(txt2img(seed=23)), events=first.append)
    renderer.run(renderer.prepare(txt2img(seed=23)), events=again.append)
    types = [e.type.value for e in again]
    assert types == ["execution_start", "execution_cached", "executed", "progress_state", "execution_success",
                     "executing"]
    assert again[1].data["nodes"] == ["4", "5", "6", "7", "3", "8", "9"]  # the prompt's order
    [ran] = [e.data for e in first if e.type is EventType.EXECUTED]
    assert again[2].data["node"] == "9" and again[2].data["output"] == ran["output"]
    board = again[3].data["nodes"]
    assert list(board) == ["9"] and board["9"]["state"] == "finished"


def test_a_retry_runs_its_output_node_again_and_writes_its_images(renderer, tmp_path):
    """A job retried after its files could not be written (JobContext.rerun_outputs) must
    write them: its SaveImage runs again instead of coming from the node cache."""
    wf = txt2img(seed=31)
    first = renderer.engine.run_batch([planned(renderer, wf)[1]])[0]
    cached = renderer.engine.run_batch([planned(renderer, wf)[1]])[0]
    assert first.ok and cached.ok and "9" in cached.cached_nodes and cached.images == []
    prepared, job = planned(renderer, wf)
    retry = PlannedJob(dataclasses.replace(job.context, rerun_outputs=True), job.plan)
    [outcome] = renderer.engine.run_batch([retry])
    assert outcome.ok and "9" in outcome.executed_nodes and "9" not in outcome.cached_nodes
    assert "8" in outcome.cached_nodes  # only the output node runs again: the decoded images come from the cache
    [ref] = outcome.images
    assert ref.filename != first.images[0].filename and (tmp_path / "output" / ref.subfolder / ref.filename).is_file()


def test_progress_state_marks_nodes_running_then_finished(renderer):
    seen = []
    renderer.run(renderer.prepare(txt2img(seed=24, steps=2)), events=seen.append)
    kinds = [(e.type.value, e.data.get("node")) for e in seen if e.type.value in ("executing", "progress")]
    boards = [e.data["nodes"] for e in seen if e.type is EventType.PROGRESS_STATE]
    # one board before each node's executing, one before each step's progress, one when it finished
    assert len(boards) == 2 * len([k for k in kinds if k[0] == "executing" and k[1]]) + 2
    last = boards[-1]
    assert all(entry["state"] == "finished" and entry["value"] == entry["max"] for entry in last.values())
    assert last["3"]["max"] == 2 and set(last) == {"3", "4", "5", "6", "7", "8", "9"}


def test_batched_jobs_equal_jobs_run_one_by_one(renderer):
    variants = [dict(seed=11, text="a red car", cfg=5.0), dict(seed=12, text="a blue boat, " * 30, cfg=7.5),
                dict(seed=13, text="a green tree", cfg=1.0)]
    for sampler in ("euler", "euler_ancestral"):
        alone = []
        for v in variants:
            prepared = renderer.prepare(txt2img(sampler=sampler, **v))
            assert renderer.run(prepared).ok
            alone.append(latent_of(renderer, prepared).clone())
        renderer.engine.cache.clear()
        jobs = [planned(renderer, txt2img(sampler=sampler, **v)) for v in variants]
        assert len({j.plan.batch_key for _, j in jobs}) == 1
        before = renderer.engine.node_runs.get("KSampler", 0)
        outcomes = renderer.engine.run_batch([j for _, j in jobs])
        assert all(o.ok for o in outcomes)
        assert renderer.engine.node_runs["KSampler"] == before + 3  # three jobs, one batched call
        for (prepared, _), expected in zip(jobs, alone):
            got = latent_of(renderer, prepared)
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        renderer.engine.cache.clear()


def test_identical_jobs_in_one_call_both_succeed_and_share_the_saved_file(renderer):
    # two prompts that are the same graph (a resubmission, a sweep row repeated) in one batch
    jobs = [planned(renderer, txt2img(seed=21), prompt_id=f"twin-{i}")[1] for i in range(2)]
    outcomes = renderer.engine.run_batch(jobs)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    files = [o.outputs["9"]["images"] for o in outcomes]
    assert files[0] == files[1] and len(files[0]) == 1


def test_img2img_denoise_keeps_part_of_the_input(renderer, tmp_path):
    (tmp_path / "input").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "input" / "src.png")
    workflow = txt2img(seed=8)
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": "src.png"}}
    workflow["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    workflow["3"]["inputs"]["latent_image"] = ["11", 0]
    results = {}
    for denoise in (0.0, 0.5):
        workflow["3"]["inputs"]["denoise"] = denoise
        prepared = renderer.prepare(workflow)
        assert renderer.run(prepared).ok
        results[denoise] = latent_of(renderer, prepared)
    encoded = renderer.engine.cache.get(prepared.plan.signatures["11"])[0].samples
    # denoise 0: no step runs; the input comes back (times and divided by the latent scale)
    assert torch.allclose(results[0.0], encoded, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(results[0.5], encoded)
