"""SIGKILL, the fault nothing can clean up after, of the farm's processes while a queue is
being worked through. tests/actors/test_gpu_worker.py kills one worker mid-job with
ray.kill and tests/actors/test_dispatcher.py restarts the dispatcher through Ray; here the
process itself gets SIGKILL from outside (what the OOM killer or a node's failure does) with
jobs queued behind the running ones, and every accepted job must end exactly once, as a
success or a one-line failure, nothing lost."""
from __future__ import annotations

import os
import signal
import time

from fault_helpers import assert_ended_once, pid_of

JOBS = 6


def queue_up(farm, txt2img, seed: int):
    """Jobs of distinct step counts with a sampler that runs one step count per call (lms),
    so not one batch: some run while others wait."""
    return farm.submit_many(txt2img, [{"3.steps": 4 + i % 3, "3.seed": seed + i, "3.sampler_name": "lms"}
                                      for i in range(JOBS)])


def wait_running(farm, prompt_ids, timeout_s: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = {item.prompt_id: item.worker_id for item in farm.status().queue.running
                   if item.prompt_id in prompt_ids}
        if running:
            return running
        time.sleep(0.05)
    raise AssertionError("no job started")


def check_all_ended(farm, futures) -> None:
    results = [f.outcome(300) for f in futures]
    for result in results:
        assert result.ok or (result.error and "\n" not in result.error), result.error
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]  # a kill is retried, not a failure
    for result in results:
        assert len(result.files) == 1 and result.files[0].is_file()
    assert_ended_once(farm, [f.prompt_id for f in futures])


def test_sigkill_of_a_worker_mid_queue_reruns_its_jobs_and_loses_none(farm, txt2img):
    pids = {w.worker_id: pid_of(farm.cluster.worker_handle(w.worker_id)) for w in farm.status().workers}
    futures = queue_up(farm, txt2img, 900)
    ids = {f.prompt_id for f in futures}
    victim = next(iter(wait_running(farm, ids).values()))
    os.kill(pids[victim], signal.SIGKILL)
    check_all_ended(farm, futures)
    assert any(f.outcome(1).attempts == 2 for f in futures)  # what it held ran again elsewhere
    assert len(farm.wait_for_workers(2, timeout=300)) == 2  # and the farm replaced it


def test_sigkill_of_the_dispatcher_mid_queue_resumes_from_the_database(farm, txt2img):
    futures = queue_up(farm, txt2img, 950)
    ids = {f.prompt_id for f in futures}
    wait_running(farm, ids)
    assert farm.status().queue.pending, "nothing waited: the kill would prove nothing"
    os.kill(pid_of(farm.cluster.dispatcher), signal.SIGKILL)  # Ray restarts it; it reloads SQLite
    check_all_ended(farm, futures)
