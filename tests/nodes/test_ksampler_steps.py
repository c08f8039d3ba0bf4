"""KSampler jobs that differ in steps, in the engine on the tiny checkpoint: with a sampler
that takes one schedule per row they run as one sampler call and each gets what it gets
alone; with one that does not (an SDE sampler) they still run in one engine call, as one
sampler call per step count."""
import pytest
import torch

from node_rendering import batched_and_alone, cpu_renderer, spy_on_sampler_calls


def workflow(steps: int, seed: int, sampler: str, cfg: float = 6.0, ckpt="tiny-sd15.safetensors"):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a lighthouse {seed}", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "karras",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "steps"}},
    }


@pytest.fixture(scope="module")
def renderer(tiny_models, tmp_path_factory):
    r = cpu_renderer(tiny_models, tmp_path_factory.mktemp("steps-out"))
    yield r
    r.close()


@pytest.fixture
def sampler_calls(monkeypatch):
    return spy_on_sampler_calls(monkeypatch)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m"])
def test_jobs_of_different_steps_share_one_sampler_call(renderer, sampler_calls, sampler):
    wfs = [workflow(5, 1, sampler), workflow(3, 2, sampler, cfg=4.0)]
    for got, expected in batched_and_alone(renderer, wfs):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sampler_calls[-1] == (2, 2)  # the batch: two rows, one schedule each


def test_sdxl_jobs_of_different_steps_share_one_sampler_call(renderer, sampler_calls):
    wfs = [workflow(2, 1, "euler", ckpt="tiny-sdxl.safetensors"), workflow(4, 2, "euler", ckpt="tiny-sdxl.safetensors")]
    for got, expected in batched_and_alone(renderer, wfs):
        # the tiny SDXL's latents reach a few hundred; a batch of equal steps differs from
        # alone by the same few parts per million (CPU kernels at another batch size)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert sampler_calls[-1] == (2, 2)


def test_a_sampler_of_one_schedule_runs_each_step_count_apart(renderer, sampler_calls):
    wfs = [workflow(3, 1, "dpmpp_2m_sde"), workflow(4, 2, "dpmpp_2m_sde"), workflow(3, 3, "dpmpp_2m_sde")]
    for got, expected in batched_and_alone(renderer, wfs):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sorted(sampler_calls[-2:]) == [(1, 1), (2, 1)]  # the two 3-step jobs together, the 4-step one apart


def test_each_job_of_a_mixed_batch_hears_its_own_steps(renderer):
    from farm.engine import JobContext, PlannedJob
    from farm.records.events import EventType

    heard: dict[str, list[tuple[int, int]]] = {}

    def listener(prompt_id):
        def sink(event):
            if event.type is EventType.PROGRESS:
                heard.setdefault(prompt_id, []).append((event.data["value"], event.data["max"]))
        return sink

    renderer.engine.cache.clear()
    prepared = [renderer.prepare(workflow(steps, 10 + steps, "euler")) for steps in (2, 4, 2)]
    jobs = [PlannedJob(JobContext(p.prompt_id, p.prompt, events=listener(p.prompt_id)), p.plan) for p in prepared]
    outcomes = renderer.engine.run_batch(jobs)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    expected = {2: [(1, 2), (2, 2)], 4: [(1, 4), (2, 4), (3, 4), (4, 4)]}
    assert [heard[p.prompt_id] for p in prepared] == [expected[2], expected[4], expected[2]]
