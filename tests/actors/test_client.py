"""farm.client.Farm against the real local farm: results with files and timings, progress
callbacks, interrupt, asyncio, and the events reaching the hub from remote workers.
(Here rather than tests/test_client.py because it shares the session's Ray farm.)"""
from __future__ import annotations

import asyncio
import threading

import pytest
from PIL import Image

from farm.client import JobFailed


def test_result_has_the_files_with_the_workflow_in_them_and_ordered_timings(ray_farm, txt2img):
    result = ray_farm.submit(txt2img, {"3.seed": 500, "6.text": "a lighthouse"}).result(180)
    assert result.ok and result.attempts == 1 and result.error is None
    (path,) = result.files
    assert path.parent.name == "renderfarm" and path.name.startswith("demo_")
    image = Image.open(path)
    assert image.size == (64, 64)
    assert '"a lighthouse"' in image.text["prompt"]  # the prompt after overrides, as ComfyUI saves it
    t = result.timings
    assert t.submitted_at_s <= t.started_at_s <= t.finished_at_s


def test_progress_callbacks_see_every_sampler_step(ray_farm, txt2img):
    steps = 5
    seen = []
    done = threading.Event()

    def on_progress(p):
        seen.append((p.value, p.max))
        if p.value == p.max:
            done.set()

    future = ray_farm.submit(txt2img, {"3.steps": steps, "3.seed": 501}, on_progress=on_progress)
    future.result(180)
    assert done.wait(30)  # events travel separately from the result; they arrive shortly
    assert seen == [(i, steps) for i in range(1, steps + 1)]


def test_interrupting_a_running_job_fails_its_future(ray_farm, txt2img):
    started = threading.Event()
    future = ray_farm.submit(txt2img, {"3.steps": 60, "3.seed": 502}, on_progress=lambda p: started.set())
    assert started.wait(180)
    assert ray_farm.interrupt(future.prompt_id) == [future.prompt_id]
    with pytest.raises(JobFailed, match="interrupted"):
        future.result(180)
    assert future.outcome().files == ()


def test_submit_async_and_map_async(ray_farm, txt2img):
    async def main():
        one = await ray_farm.submit_async(txt2img, {"3.seed": 503})
        many = await ray_farm.map_async(txt2img, [{"3.seed": 504}, {"3.seed": 505}])
        return one, many

    one, many = asyncio.run(main())
    assert one.ok and len(many) == 2 and all(r.ok for r in many)
    assert len({one.files[0], *(r.files[0] for r in many)}) == 3


def test_map_keeps_the_order_of_its_overrides(ray_farm, txt2img):
    results = ray_farm.map(txt2img, [{"3.seed": 600 + i, "9.filename_prefix": f"order/{i}"} for i in range(5)],
                           progress=False)
    assert [r.files[0].name.split("_")[0] for r in results] == [str(i) for i in range(5)]
