"""GET /metrics: the farm in Prometheus' text format (deploy/grafana-dashboard.json plots it).

Each scrape asks the farm for one FarmMetrics record and renders it through a
throw-away registry: nothing is kept between scrapes here, the counters live where the
events happen (the dispatcher, each worker). Per-worker series carry the labels worker,
node and gpu; a worker without a GPU has no utilisation series (farm_gpu_info says why).
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from farm.records.metrics import FarmMetrics, WorkerMetrics
from farm.server.deps import Service

router = APIRouter()

WORKER_LABELS = ("worker", "node", "gpu")

# Every family GET /metrics exports (the dashboard's test checks it references only these).
FAMILIES = (
    "farm_queue_depth", "farm_jobs_running", "farm_jobs_finished", "farm_images", "farm_job_latency_seconds",
    "farm_backlog_gpu_seconds", "farm_workers", "farm_gpu_info", "farm_gpu_utilization_ratio",
    "farm_gpu_memory_used_bytes", "farm_gpu_memory_total_bytes", "farm_model_loads", "farm_model_load_seconds",
    "farm_model_evictions", "farm_node_cache_hits", "farm_node_runs", "farm_autoscaler_requested_gpus",
    "farm_autoscaler_wanted_gpus",
)


def _worker_labels(w: WorkerMetrics) -> list[str]:
    return [w.worker_id, w.node, "" if w.gpu_index is None else str(w.gpu_index)]


def families(m: FarmMetrics) -> list:
    depth = GaugeMetricFamily("farm_queue_depth", "Jobs waiting in the queue, by checkpoint", labels=["checkpoint"])
    for checkpoint, count in sorted(m.queue_depth.items()):
        depth.add_metric([checkpoint], count)
    finished = CounterMetricFamily("farm_jobs_finished", "Jobs that reached history, by final state",
                                   labels=["state"])
    for state, count in sorted(m.finished.items()):
        finished.add_metric([state], count)
    h = m.latency
    cumulative, buckets = 0, []
    for bound, count in zip((*h.bounds, float("inf")), h.counts):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    latency = HistogramMetricFamily("farm_job_latency_seconds", "Seconds from submit to history, jobs done",
                                    buckets=buckets, sum_value=h.sum)
    out = [depth, GaugeMetricFamily("farm_jobs_running", "Jobs in a worker's current call", value=m.running),
           finished, CounterMetricFamily("farm_images", "Images written by jobs done", value=m.images), latency,
           GaugeMetricFamily("farm_backlog_gpu_seconds", "GPU seconds of queued and running work",
                             value=m.backlog_gpu_s),
           GaugeMetricFamily("farm_workers", "Workers that answered", value=sum(w.alive for w in m.workers))]
    out += _worker_families(m.workers)
    for name, value, text in (("farm_autoscaler_requested_gpus", m.autoscaler_requested_gpus,
                               "GPUs last asked of the cluster autoscaler"),
                              ("farm_autoscaler_wanted_gpus", m.autoscaler_wanted_gpus,
                               "GPUs the backlog asks for now, before the scale-down delay")):
        family = GaugeMetricFamily(name, text + " (absent: autoscaling is off)", labels=[])
        if value is not None:
            family.add_metric([], value)
        out.append(family)
    return out


def _worker_families(workers: tuple[WorkerMetrics, ...]) -> list:
    info = GaugeMetricFamily("farm_gpu_info", "1 per worker; reason says why its GPU is not measured",
                             labels=[*WORKER_LABELS, "gpu_name", "reason"])
    util = GaugeMetricFamily("farm_gpu_utilization_ratio", "GPU busy fraction over the last window (NVML)",
                             labels=WORKER_LABELS)
    used = GaugeMetricFamily("farm_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=WORKER_LABELS)
    total = GaugeMetricFamily("farm_gpu_memory_total_bytes", "GPU memory (NVML)", labels=WORKER_LABELS)
    tiered = ["worker", "tier"]
    loads = CounterMetricFamily("farm_model_loads", "Checkpoint loads into device memory, by source tier",
                                labels=tiered)
    load_s = CounterMetricFamily("farm_model_load_seconds", "Seconds spent loading checkpoints, by source tier",
                                 labels=tiered)
    evictions = CounterMetricFamily("farm_model_evictions", "Checkpoints that left a tier to make room",
                                    labels=tiered)
    hits = CounterMetricFamily("farm_node_cache_hits", "Node outputs taken from a worker's cache",
                               labels=["worker"])
    runs = CounterMetricFamily("farm_node_runs", "Node executions (a batched call counts once)", labels=["worker"])
    for w in workers:
        labels = _worker_labels(w)
        info.add_metric([*labels, w.gpu_name, w.gpu.utilization_reason or ""], 1)
        if w.gpu.utilization is not None:
            util.add_metric(labels, w.gpu.utilization)
        if w.gpu.memory_used_bytes is not None:
            used.add_metric(labels, w.gpu.memory_used_bytes)
            total.add_metric(labels, w.gpu.memory_total_bytes or 0)
        c = w.counters
        for family, values in ((loads, c.loads), (load_s, c.load_seconds), (evictions, c.evictions)):
            for tier, value in sorted(values.items()):
                family.add_metric([w.worker_id, tier], value)
        hits.add_metric([w.worker_id], c.node_cache_hits)
        runs.add_metric([w.worker_id], c.node_runs)
    return [info, util, used, total, loads, load_s, evictions, hits, runs]


class _Snapshot:
    """A collector over one FarmMetrics record."""

    def __init__(self, metrics: FarmMetrics):
        self.metrics = metrics

    def collect(self):
        return families(self.metrics)


def render(metrics: FarmMetrics) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False)  # a text format for Prometheus, not a JSON API
async def metrics(service: Service) -> Response:
    return Response(render(await service.metrics()), media_type=CONTENT_TYPE_LATEST)
