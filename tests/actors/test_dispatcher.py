"""The Dispatcher actor on a real local Ray cluster (two logical GPUs, tiny checkpoints):
placement by residency, a durable queue across a dispatcher crash, and a burst that
loses and duplicates nothing."""
from __future__ import annotations

import pytest

from farm.errors import UnknownJobError
from farm.workflow.prepare import ValidationFailed

SDXL = "tiny-sdxl.safetensors"


def holders(farm, checkpoint: str) -> set[str]:
    return {w.worker_id for w in farm.status().workers if checkpoint in w.tiers.vram}


def test_jobs_go_to_the_worker_that_holds_their_checkpoint(ray_farm, txt2img):
    farm = ray_farm
    sdxl = {"4.ckpt_name": SDXL}
    assert len(farm.wait_for_workers(2)) == 2
    first = farm.submit(txt2img, {**sdxl, "3.seed": 100}).result(120)
    holding = holders(farm, SDXL)
    assert first.worker_id in holding
    others = {w.worker_id for w in farm.status().workers} - holding
    assert others, "every worker already holds the checkpoint: nothing to prefer"
    # one at a time, so the other worker is idle each time and could have taken it
    later = [farm.submit(txt2img, {**sdxl, "3.seed": 101 + i}).result(120) for i in range(4)]
    assert {r.worker_id for r in later} <= holding
    assert all(r.attempts == 1 for r in later)


def test_a_restarted_dispatcher_resumes_the_queue(ray_farm, txt2img):
    farm = ray_farm
    farm.wait_for_workers(2)
    # distinct step counts with a sampler that runs one step count per call (lms): six
    # batches of one, so most are still queued when it dies
    variants = [{"3.steps": 6 + i, "3.seed": 200 + i, "3.sampler_name": "lms"} for i in range(6)]
    futures = farm.submit_many(txt2img, variants)
    ids = [f.prompt_id for f in futures]
    queued = farm.status().queue
    assert len(queued.pending) >= 1, "everything already started: the test would prove nothing"
    farm.cluster.kill_dispatcher(restart=True)  # Ray starts it again; it reloads SQLite
    results = [f.outcome(240) for f in futures]
    assert [r.prompt_id for r in results] == ids
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    history = [h for h in farm.history() if h.prompt_id in set(ids)]
    assert sorted(h.prompt_id for h in history) == sorted(ids)  # each exactly once
    for result in results:
        assert len(result.files) == 1 and result.files[0].is_file()


def test_a_burst_of_200_jobs_completes_with_nothing_lost_or_duplicated(ray_farm, txt2img):
    farm = ray_farm
    before = {h.prompt_id for h in farm.history()}
    results = farm.map(txt2img, [{"3.seed": 1000 + i} for i in range(200)], progress=False, timeout=600)
    ids = [r.prompt_id for r in results]
    assert len(set(ids)) == 200 and all(r.ok for r in results)
    history = [h for h in farm.history() if h.prompt_id in set(ids)]
    assert len(history) == 200 and {h.prompt_id for h in history} == set(ids)
    assert not before & set(ids)
    files = [f for r in results for f in r.files]
    assert len(files) == 200 and len(set(files)) == 200
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    assert farm.status().queue.remaining == 0


def test_a_bad_workflow_is_refused_before_anything_is_queued(ray_farm, txt2img):
    farm = ray_farm
    before = len(farm.history())
    with pytest.raises(ValidationFailed, match="ckpt_name"):
        farm.submit(txt2img, {"4.ckpt_name": "missing.safetensors"})
    # one bad variant among good ones: none of them is queued
    with pytest.raises(ValidationFailed):
        farm.submit_many(txt2img, [{"3.seed": 1}, {"3.steps": 0}])
    assert farm.status().queue.remaining == 0
    assert len(farm.history()) == before


def test_cancel_of_a_queued_job_removes_it(ray_farm, txt2img):
    farm = ray_farm
    farm.wait_for_workers(2)
    # fill both workers, each with a batch running and one in reserve (pipeline_depth 2),
    # then queue one more and cancel it before it starts
    # (lms: one step count per call, so these are four batches)
    busy = farm.submit_many(txt2img, [{"3.steps": 30 + i, "3.seed": 7, "3.sampler_name": "lms"} for i in range(4)])
    target = farm.submit(txt2img, {"3.steps": 40, "3.seed": 8, "3.sampler_name": "lms"})
    assert target.cancel()
    with pytest.raises(UnknownJobError):  # nothing to wait for: it will never run
        target.outcome(120)
    # cancelled before it started: gone from the queue without a history entry, as in ComfyUI
    assert farm.cluster.call("job_state", target.prompt_id) is None
    assert all(f.outcome(240).ok for f in busy)


def test_images_that_cannot_be_written_end_the_job_as_a_clear_failure(ray_farm, txt2img):
    farm = ray_farm
    farm.wait_for_workers(2)
    output = farm.cluster.call("paths").output
    output.mkdir(parents=True, exist_ok=True)
    (output / "blocked").write_text("a file where the subfolder should be")
    future = farm.submit(txt2img, {"9.filename_prefix": "blocked/img", "3.seed": 9})
    result = future.outcome(240)  # retried like any write fault, then failed: never a hang
    assert not result.ok and result.attempts == 3
    assert "writing the images failed: cannot write" in result.error and "blocked" in result.error
    assert "Traceback" not in result.error
    assert farm.submit(txt2img, {"3.seed": 10}).result(120).ok  # the writer goes on for everyone else
