"""The elastic pool and the autoscaler request, on the session's Ray cluster (two logical
GPUs, no autoscaler: the request is stored in Ray's internal KV, where it is read back)."""
from __future__ import annotations

import json
import time

import pytest
import ray
from ray.experimental.internal_kv import _internal_kv_get

from actors.elastic import REQUEST_KV_KEY, ElasticPool, send_request
from farm.scheduler.autoscale import ScaleKnobs


def requested_bundles() -> list[dict] | None:
    raw = _internal_kv_get(REQUEST_KV_KEY)
    return None if raw is None else json.loads(raw)


def wait_for_request(predicate, timeout_s: float = 30.0) -> list[dict] | None:
    deadline = time.monotonic() + timeout_s
    while True:
        bundles = requested_bundles()
        if predicate(bundles) or time.monotonic() > deadline:
            return bundles
        time.sleep(0.1)


@pytest.fixture
def autoscaling(ray_farm):
    """Autoscaling on the shared farm for one test; afterwards off, and the request empty."""
    def configure(knobs: ScaleKnobs) -> None:
        ray_farm.cluster.call("set_autoscale", knobs)

    try:
        yield configure
    finally:
        ray_farm.cluster.call("set_autoscale", None)
        send_request(0)  # even if a dispatcher restart lost track of what it had asked
        assert requested_bundles() in (None, [])
        # an autoscaling farm retires idle workers once the queue drains; without autoscaling
        # the pool grows back to one per GPU, which the other tests expect
        ray_farm.wait_for_workers(2)


def test_the_queue_asks_the_autoscaler_for_gpus_and_withdraws_once_it_drains(ray_farm, txt2img, autoscaling):
    farm = ray_farm
    farm.wait_for_workers(2)
    autoscaling(ScaleKnobs(max_gpus=3, target_backlog_s=0.5, scale_down_delay_s=1.0))
    # distinct step counts with lms (one step count per call): six batches of one (1 GPU
    # second each by the default estimate), so the backlog asks for more than the cap for as
    # long as most of them wait
    futures = farm.submit_many(txt2img, [{"3.steps": 6 + i, "3.seed": 300 + i, "3.sampler_name": "lms"}
                                         for i in range(6)])
    asked = wait_for_request(lambda b: b == [{"GPU": 1}] * 3)
    assert asked == [{"GPU": 1}] * 3, f"the farm asked for {asked} with six jobs queued"
    results = [f.outcome(240) for f in futures]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    withdrawn = wait_for_request(lambda b: b == [])
    assert withdrawn == [], f"the queue drained but the request is still {withdrawn}"


def test_the_pool_grows_to_the_clusters_gpus_up_to_its_cap(ray_farm):
    gpus = int(ray.cluster_resources()["GPU"])
    assert gpus == 2
    assert ElasticPool(None, None, None).missing_workers(1) == 1  # one per GPU: a node brought one
    assert ElasticPool(2, None, None).missing_workers(2) == 0  # a fixed pool stays as it is
    assert ElasticPool(1, None, None).missing_workers(1) == 0
    assert ElasticPool(None, 1, None).missing_workers(0) == 1  # the cap holds however many GPUs join
    assert ElasticPool(None, 8, None).missing_workers(0) == gpus
    # the farm itself: as many workers as GPUs, none started twice
    assert len(ray_farm.cluster.call("worker_ids")) == gpus


def test_an_idle_worker_above_the_wanted_count_is_retired_and_its_gpu_freed(ray_farm, txt2img, autoscaling):
    farm = ray_farm
    farm.wait_for_workers(2)
    # an empty queue wants min_gpus (1): after the delay one of the two idle workers goes
    autoscaling(ScaleKnobs(max_gpus=2, target_backlog_s=60.0, scale_down_delay_s=1.0, min_gpus=1))
    deadline = time.monotonic() + 30
    while len(farm.cluster.call("worker_ids")) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    (left,) = farm.cluster.call("worker_ids")
    deadline = time.monotonic() + 30  # ray.kill returns before the GCS frees the GPU
    while ray.available_resources().get("GPU", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0) >= 1, "the retired worker's GPU was not freed"
    time.sleep(6)  # past the pool check: the free GPU is not given a new worker
    assert farm.cluster.call("worker_ids") == [left]
    result = farm.submit(txt2img, {"3.seed": 401}).outcome(120)  # the one left still renders
    assert result.ok and result.worker_id == left, result.error
