"""GET /metrics over the real farm (tests/server/conftest.py `farm_server`), read with
prometheus_client's own parser, and the Grafana dashboard checked against what it exports."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from farm.records.metrics import NO_GPU
from farm.scheduler.autoscale import ScaleKnobs

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"


def scrape(base: str) -> dict:
    """family name -> {(sample name, labels as a sorted tuple): value}"""
    answer = httpx.get(base + "/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(answer.text):
        families[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return families


def total(families: dict, family: str, sample: str | None = None, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (name, got), v in families.get(family, {}).items()
               if (sample is None or name == sample) and wanted <= set(got))


def test_metrics_count_the_jobs_that_ran_and_describe_every_worker(farm_server, ray_farm, txt2img):
    before = scrape(farm_server)
    ray_farm.wait_for_workers(2)
    for seed in (700, 701):  # one after the other: the second finds the first's loader and prompts cached
        ray_farm.submit(txt2img, {"3.seed": seed}).result(240)
    after = scrape(farm_server)

    assert total(after, "farm_jobs_finished", state="done") - total(before, "farm_jobs_finished", state="done") == 2
    assert total(after, "farm_images") - total(before, "farm_images") == 2
    done = total(after, "farm_job_latency_seconds", "farm_job_latency_seconds_count")
    assert done - total(before, "farm_job_latency_seconds", "farm_job_latency_seconds_count") == 2
    assert total(after, "farm_job_latency_seconds", "farm_job_latency_seconds_bucket", le="+Inf") == done
    assert total(after, "farm_job_latency_seconds", "farm_job_latency_seconds_sum") > 0
    assert total(after, "farm_queue_depth") == 0 and total(after, "farm_jobs_running") == 0
    assert total(after, "farm_workers") == 2
    assert total(after, "farm_model_loads") >= 1  # the session's first jobs loaded checkpoints
    assert total(after, "farm_node_cache_hits") > total(before, "farm_node_cache_hits")
    assert total(after, "farm_node_runs") > total(before, "farm_node_runs")
    # CPU workers: listed, with the reason they have no utilisation series
    info = after["farm_gpu_info"]
    assert len(info) == 2 and all(dict(labels)["reason"] == NO_GPU for _, labels in info)
    assert after["farm_gpu_utilization_ratio"] == {}
    assert after["farm_autoscaler_requested_gpus"] == {}  # autoscaling is off on this farm

    workers = httpx.get(farm_server + "/workers", timeout=30).json()
    assert len(workers) == 2
    assert all(w["utilization"] is None and w["utilization_reason"] == NO_GPU for w in workers)


def test_the_autoscaler_request_is_exported(farm_server, ray_farm):
    from actors.elastic import send_request

    try:
        ray_farm.cluster.call("set_autoscale", ScaleKnobs(max_gpus=2, min_gpus=1, scale_down_delay_s=0))
        deadline = time.monotonic() + 30
        while (requested := total(scrape(farm_server), "farm_autoscaler_requested_gpus")) != 1:
            assert time.monotonic() < deadline, f"the exported request stayed {requested}"
            time.sleep(0.2)
        assert total(scrape(farm_server), "farm_autoscaler_wanted_gpus") == 1  # the floor: nothing queued
    finally:
        ray_farm.cluster.call("set_autoscale", None)
        send_request(0)
        ray_farm.wait_for_workers(2)  # an empty queue under autoscaling retires a worker: back to two


def test_the_grafana_dashboard_plots_only_exported_metrics(farm_server):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    referenced = {name for expr in exprs for name in re.findall(r"\bfarm_[a-z_]+\b", expr)}
    assert len(referenced) >= 15, sorted(referenced)
    text = httpx.get(farm_server + "/metrics", timeout=30).text
    exported = set()
    for family in text_string_to_metric_families(text):  # a family with no samples yet still counts
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        exported |= {family.name + suffix for suffix in suffixes}
    assert referenced <= exported, f"the dashboard plots metrics /metrics never exports: {referenced - exported}"
